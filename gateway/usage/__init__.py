"""Token usage: read from the replicas' answers, recorded per key, tenant, model and day."""

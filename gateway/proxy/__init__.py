"""The hot path: route allowlist, request checks and byte-for-byte forwarding."""

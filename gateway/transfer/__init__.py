"""Moving a gateway's stored state (keys, usage, audit log) between stores, through a file."""

"""The admin API: keys, usage and the audit log, under `/admin/v1`."""

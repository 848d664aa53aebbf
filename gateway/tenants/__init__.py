"""Tenants as data: their limits, quotas, allowed models and metadata, kept in the key store."""

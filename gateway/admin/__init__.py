"""The admin API: keys, usage and the audit log, under `/admin/v1`."""

from __future__ import annotations

from gateway.admin.app import create_admin_app
from gateway.admin.audit import (
    AuditEntry,
    AuditLog,
    AuditLogError,
    AuditLogUnavailable,
    MemoryAuditLog,
    RedisAuditLog,
    SqliteAuditLog,
)
from gateway.admin.auth import AdminAuthorizer, JWTAdminCheck
from gateway.admin.keys import UsageReader

__all__ = [
    "AdminAuthorizer",
    "AuditEntry",
    "AuditLog",
    "AuditLogError",
    "AuditLogUnavailable",
    "JWTAdminCheck",
    "MemoryAuditLog",
    "RedisAuditLog",
    "SqliteAuditLog",
    "UsageReader",
    "create_admin_app",
]

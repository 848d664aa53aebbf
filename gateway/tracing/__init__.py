"""OpenTelemetry traces of the request path; imported only when `tracing.enabled` is on."""

"""Pure-ASGI middleware; their order is written down in `gateway.app.build_stack`."""

"""Rate limits: requests and tokens per minute and concurrent requests, per key and tenant."""

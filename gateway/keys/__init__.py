"""API keys: the key string (`format`), what is stored about a key (`records`), and the
`KeyStore` seam (`store`) with its SQLite (`sqlite`) and Redis (`redis_store`) stores."""

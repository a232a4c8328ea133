"""Authentication: who is calling. Bearer JWTs (keys from OIDC discovery), later opaque tokens, sessions."""

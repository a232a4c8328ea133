"""Authentication: who is calling. Bearer JWTs (keys from OIDC discovery), opaque tokens (RFC 7662
introspection), client certificates; browser sessions arrive with the login flow."""

"""What the settings and the token validator agree on about signed tokens, defined once.

A vocabulary module: it imports nothing of authcar, so `authcar.config` (which checks settings
against it) and `authcar.authn` (which enforces it) can both use it without one importing the other.
"""

from __future__ import annotations

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
# JWK curve -> the one algorithm a key on it may verify.
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
# The only algorithms accepted: HS* would let anyone holding the (public) verification key mint tokens.
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS.values()) | {"EdDSA"}

# Clock skew tolerated on exp, nbf and iat, in seconds. More than a few minutes would keep an expired
# token usable well past its lifetime.
DEFAULT_LEEWAY = 30.0
MAX_LEEWAY = 300.0

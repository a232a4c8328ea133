"""Micro-benchmark of bearer-token validation, no network: what a token costs inside the sidecar.

    python bench/tokens.py [--first-seen 2000] [--json FILE]

Builds authcar's JWTValidator over a static JWKS file (a fresh RSA-2048 key, tokens shaped like the
test provider's) and prints microseconds per operation, best of several rounds:

- the pieces of the repeated-token path: finding the token in a request's headers
  (`TokenSources.find`, or `bearer_token()` in earlier code), the SHA-256 of the token (the cache
  key), `validate()` of a token verified before (a cache hit);
- `validate()` of a first-seen token (every check, the signature, the claim mapping, the cache insert);
- pyjwt's `jwt.decode` RS256 with claim checks (audience, issuer, leeway, required claims),
  `jwt.decode` with signature only, and the bare RSA PKCS#1 v1.5 verification by `cryptography`.

Also the helpers bench/run.py uses: signing many distinct tokens, and the per-run `jwt.decode` cost.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import inspect
import json
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if str(REPO_DIR) not in sys.path:
    sys.path.insert(0, str(REPO_DIR))

import jwt  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402
from jwt.algorithms import RSAAlgorithm  # noqa: E402

ISSUER = "http://127.0.0.1:40000/realms/test"  # as long as tests/idp's: same token length (873 bytes)
AUDIENCE = "api"


# --- tokens (also used by bench/run.py) ---------------------------------------


def claims_like_idp(issuer: str, *, expires_in: int = 4 * 3600, now: int | None = None) -> dict[str, Any]:
    """The claims tests/idp mints by default (same names, same sizes), for a fresh jti."""
    now = int(time.time()) if now is None else now
    return {
        "iss": issuer,
        "sub": "alice",
        "aud": AUDIENCE,
        "exp": now + expires_in,
        "iat": now,
        "nbf": now,
        "jti": str(uuid.uuid4()),
        "typ": "Bearer",
        "azp": "authcar",
        "scope": "read",
        "realm_access": {"roles": ["reader"]},
        "groups": [],
        "email": "alice@example.com",
        "preferred_username": "alice",
    }


def sign_many(
    private_key: Any, kid: str, template: Mapping[str, Any], count: int, *, alg: str = "RS256"
) -> list[str]:
    """`count` distinct tokens: the template's claims with a fresh uuid4 `jti` each (same length)."""
    headers = {"kid": kid, "typ": "JWT"}
    return [
        jwt.encode({**template, "jti": str(uuid.uuid4())}, private_key, algorithm=alg, headers=headers)
        for _ in range(count)
    ]


def per_op_us(fn: Callable[[], object], number: int, rounds: int = 5) -> float:
    """Best of `rounds` timeit rounds, in microseconds per call."""
    return min(timeit.Timer(fn).repeat(repeat=rounds, number=number)) / number * 1e6


def decode_cost_us(
    token: str, public_key: Any, *, issuer: str, audience: str, number: int = 2000
) -> dict[str, float]:
    """What one first-seen RS256 token costs in pyjwt and in the bare RSA check, µs per op."""
    signing_input, _, sig = token.rpartition(".")
    signature = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    message = signing_input.encode()
    options = {"require": ["exp", "iat", "sub"], "verify_aud": True, "strict_aud": False}

    def with_claims() -> object:
        return jwt.decode(
            token,
            public_key,
            algorithms=["RS256"],
            audience=[audience],
            issuer=issuer,
            leeway=30.0,
            options=options,
        )

    def signature_only() -> object:
        return jwt.decode(token, public_key, algorithms=["RS256"], options={"verify_aud": False})

    def rsa_verify() -> None:
        public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())

    with_claims()  # fails loudly here if the token does not verify
    return {
        "jwt_decode_us": per_op_us(with_claims, number),
        "jwt_decode_signature_only_us": per_op_us(signature_only, number),
        "rsa_verify_us": per_op_us(rsa_verify, number),
    }


# --- the micro-benchmark ------------------------------------------------------


def new_key() -> tuple[rsa.RSAPrivateKey, str, dict[str, Any]]:
    """A fresh RSA-2048 key, its kid (the RFC 7638 thumbprint, as tests/idp names keys) and JWKS."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    members = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"), sort_keys=True)
    kid = base64.urlsafe_b64encode(hashlib.sha256(members.encode()).digest()).rstrip(b"=").decode()
    jwk.update(kid=kid, use="sig", alg="RS256")
    return private, kid, {"keys": [jwk]}


async def new_validator(jwks_file: Path, cache_size: int | None = None) -> Any:
    from authcar.authn.jwt import IssuerPolicy, JWTValidator
    from authcar.authn.keys import KeySet
    from authcar.claims import ClaimMapping

    keyset = KeySet(None, static_file=jwks_file)
    await keyset.refresh()
    if not keyset.loaded:
        raise SystemExit(f"the static key set did not load: {keyset.last_error}")
    policy = IssuerPolicy(issuer=ISSUER, audiences=frozenset({AUDIENCE}), algorithms=frozenset({"RS256"}))
    mapping = ClaimMapping()
    extra = {} if cache_size is None else {"cache_size": cache_size}
    if "identify" in inspect.signature(JWTValidator).parameters:
        # Earlier API: issuer -> (policy, keyset), plus one identify(claims, issuer) callable.
        return JWTValidator(
            {ISSUER: (policy, keyset)},
            lambda claims, issuer: mapping.identity(claims, issuer, "jwt"),
            **extra,
        )
    return JWTValidator({ISSUER: StaticIssuer(policy, keyset, mapping)}, **extra)


@dataclass(frozen=True)
class StaticIssuer:
    """A TrustedIssuer (authcar.authn.jwt) with a fixed key set, as bearer.py builds for a JWKS file."""

    policy: Any
    keyset: Any
    mapping: Any

    def identify(self, claims: Mapping[str, Any]) -> Any:
        return self.mapping.identity(claims, self.policy.issuer, "jwt")


async def validate_loop_us(validator: Any, tokens: Iterable[str], count: int) -> float:
    """Await validate() for each token in turn (as the sidecar does), µs per call."""
    validate = validator.validate
    started = time.perf_counter()
    for token in tokens:
        await validate(token)
    return (time.perf_counter() - started) / count * 1e6


def token_finder() -> tuple[str, Callable[[Any], object]]:
    """authcar's "find the bearer token in the request" step, whichever shape the code has now."""
    try:
        from authcar.authn.sources import TokenSources
    except ImportError:
        from authcar.authn.bearer import bearer_token  # type: ignore[attr-defined]

        return "bearer_token(headers)", bearer_token
    sources = TokenSources()
    return "TokenSources.find(headers)", lambda headers: sources.find(headers, b"")


async def measure(first_seen: int, repeated: int, rounds: int) -> dict[str, Any]:
    find_label, find_token = token_finder()
    private, kid, jwks = new_key()
    public = private.public_key()
    tmp = Path(tempfile.mkdtemp(prefix="authcar-tokens-"))
    jwks_file = tmp / "jwks.json"
    jwks_file.write_text(json.dumps(jwks))
    template = claims_like_idp(ISSUER)
    print(f"signing {first_seen + 1} tokens ...", file=sys.stderr, flush=True)
    token, *fresh = sign_many(private, kid, template, first_seen + 1)
    header_value = b"Bearer " + token.encode()
    headers = [
        (b"host", b"127.0.0.1:8080"),
        (b"user-agent", b"wrk"),
        (b"accept", b"*/*"),
        (b"authorization", header_value),
    ]
    results: dict[str, Any] = {
        "token_bytes": len(token),
        "rounds": rounds,
        "first_seen_tokens": first_seen,
    }

    results["find_token"] = find_label
    results["find_token_us"] = per_op_us(lambda: find_token(headers), repeated, rounds)
    results["sha256_token_us"] = per_op_us(
        lambda: hashlib.sha256(token.encode("latin-1", "replace")).digest(), repeated, rounds
    )

    validator = await new_validator(jwks_file)
    verified = await validator.validate(token)
    assert not verified.cached
    assert (await validator.validate(token)).cached, "the repeated token was not answered from the cache"
    results["validate_repeated_us"] = min(
        [await validate_loop_us(validator, [token] * repeated, repeated) for _ in range(rounds)]
    )

    # First-seen: a fresh validator (empty cache) per round, every (distinct) token validated once.
    assert len(set(fresh)) == len(fresh)
    first_seen_runs = []
    for _ in range(rounds):
        validator = await new_validator(jwks_file)
        first_seen_runs.append(await validate_loop_us(validator, fresh, len(fresh)))
    results["validate_first_seen_us"] = min(first_seen_runs)
    results["validate_first_seen_median_us"] = statistics.median(first_seen_runs)

    results.update(
        decode_cost_us(token, public, issuer=ISSUER, audience=AUDIENCE, number=max(200, first_seen // 2))
    )
    return results


ROWS = (
    ("find the token in the headers", "find_token_us"),
    ("sha256(token) (cache key)", "sha256_token_us"),
    ("validate(), repeated token (cache hit)", "validate_repeated_us"),
    ("validate(), first-seen token", "validate_first_seen_us"),
    ("jwt.decode RS256, with aud/iss/exp checks", "jwt_decode_us"),
    ("jwt.decode RS256, signature only", "jwt_decode_signature_only_us"),
    ("RSA-2048 PKCS#1 v1.5 verify (cryptography)", "rsa_verify_us"),
)


def report(results: Mapping[str, Any]) -> str:
    width = max(len(label) for label, _ in ROWS)
    lines = [f"token: {results['token_bytes']} bytes, RS256, RSA-2048; best of {results['rounds']} rounds"]
    lines.append(f"{'operation'.ljust(width)}  µs/op")
    lines.append(f"{'-' * width}  -----")
    for label, key in ROWS:
        lines.append(f"{label.ljust(width)}  {results[key]:6.2f}")
    lines.append(f"(token found with {results['find_token']})")
    extra = results["validate_first_seen_us"] - results["validate_repeated_us"]
    lines.append(
        f"first-seen minus repeated: {extra:.1f} µs = {extra / results['jwt_decode_us']:.2f} x jwt.decode, "
        f"{extra / results['rsa_verify_us']:.2f} x RSA verify"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--first-seen", type=int, default=2000, help="distinct tokens validated once each (default 2000)"
    )
    parser.add_argument(
        "--repeated", type=int, default=20000, help="calls per round on the fast paths (default 20000)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is reported (default 5)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.first_seen < 1 or args.repeated < 1 or args.rounds < 1:
        parser.error("--first-seen, --repeated and --rounds must be >= 1")
    results = asyncio.run(measure(args.first_seen, args.repeated, args.rounds))
    print(report(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv),
            **results,
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

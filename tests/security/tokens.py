"""The tokens the corpus names as `{token:NAME}`, built from the test identity provider's real keys.

Every token is built when a case runs (its times are relative to now). Valid ones are signed by a key
the provider publishes; attacks are signed by that key too wherever only one check should stop them
(issuer, audience, times, crit, claims), so a passing case proves that check, not a signature failure.
Attacker keys are generated here and never published.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.idp import IdPClient
from tests.idp.keys import SigningKey, b64url, hmac_jws, new_key, sign_jws, unsigned_jws
from tests.support.tls_material import CertAuthority

SUBJECT = "alice"
AUDIENCE = "api"
ROLE = "reader"


class Tokens:
    """Builds named tokens for one provider; `canary_url` is where a token points keys it must never
    be fetched from (the recording upstream: a fetch would show up there as a request)."""

    def __init__(self, idp: IdPClient, canary_url: str) -> None:
        self.issuer = idp.issuer
        self.canary_url = canary_url.rstrip("/")
        self.published: dict[str, SigningKey] = {}
        for jwk in idp.keys["keys"]:
            private = load_pem_private_key(str(idp.call("private_key", kid=jwk["kid"])).encode(), None)
            self.published[jwk["alg"]] = SigningKey(jwk["kid"], jwk["alg"], private)
        self.attacker = {alg: new_key(alg) for alg in ("RS256", "ES256")}
        self.attacker_ca = CertAuthority("attacker")

    # -- building blocks

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": SUBJECT,
            "aud": AUDIENCE,
            "exp": now + 300,
            "iat": now,
            "nbf": now,
            "jti": str(uuid.uuid4()),
            "scope": "read",
            "realm_access": {"roles": [ROLE]},
            "email": "alice@example.com",
            "preferred_username": SUBJECT,
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not OMIT}

    def signed(
        self,
        alg: str = "RS256",
        *,
        claims: Mapping[str, Any] | bytes | None = None,
        header: Mapping[str, Any] | None = None,
        key: SigningKey | None = None,
    ) -> str:
        """Signed by the provider's published key for `alg` (or `key`), header merged over the usual."""
        key = key or self.published[alg]
        full = {"alg": alg, "typ": "JWT", "kid": key.kid, **(header or {})}
        full = {name: value for name, value in full.items() if value is not OMIT}
        return sign_jws(full, self.claims() if claims is None else claims, key, alg)

    def confused(self, alg: str, key_alg: str, fmt: str, *, kid: bool = True) -> str:
        """Algorithm confusion: HS* keyed with a published key's public half in an encoding."""
        key = self.published[key_alg]
        header = {"alg": alg, "typ": "JWT", **({"kid": key.kid} if kid else {})}
        return hmac_jws(header, self.claims(), key.public_bytes(fmt), alg)  # type: ignore[arg-type]

    def unsigned(self, alg: Any, *, signature: bytes = b"") -> str:
        header = {"alg": alg, "typ": "JWT", "kid": self.published["RS256"].kid}
        token = unsigned_jws(header, self.claims())
        return token + b64url(signature) if signature else token

    def by_attacker(self, header: Mapping[str, Any], alg: str = "RS256") -> str:
        key = self.attacker[alg]
        full = {"alg": alg, "typ": "JWT", **header}
        return sign_jws({k: v for k, v in full.items() if v is not OMIT}, self.claims(), key, alg)

    def build(self, name: str) -> str:
        try:
            builder = BUILDERS[name]
        except KeyError:
            raise KeyError(f"no token named {name!r}; known: {', '.join(sorted(BUILDERS))}") from None
        return builder(self)


class Omit:
    def __repr__(self) -> str:
        return "OMIT"


OMIT: Any = Omit()  # a claim or header parameter left out


def raw_header_token(tokens: Tokens, header_json: str) -> str:
    """A header written as raw JSON text (escapes, duplicate keys), over a signature of the real key."""
    header = b64url(header_json.encode())
    payload = b64url(json.dumps(tokens.claims()).encode())
    signature = tokens.published["RS256"].sign(f"{header}.{payload}".encode())
    return f"{header}.{payload}.{b64url(signature)}"


def deep_header(tokens: Tokens) -> str:
    header = b'{"alg":"RS256","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    payload = json.dumps(tokens.claims()).encode()
    return f"{b64url(header)}.{b64url(payload)}.{b64url(b'sig')}"


def raw_claim(tokens: Tokens, name: str, json_text: str) -> bytes:
    """The usual claims with one written as raw JSON text (numbers json.dumps would not write)."""
    placeholder = "__raw_claim__"
    return json.dumps(tokens.claims(**{name: placeholder})).replace(f'"{placeholder}"', json_text).encode()


def with_x5c(t: Tokens) -> str:
    ca = t.attacker_ca
    der = ca.cert.public_bytes(serialization.Encoding.DER)
    header = {"alg": "ES256", "typ": "JWT", "x5c": [base64.b64encode(der).decode()]}
    signer = SigningKey("attacker-ca", "ES256", ca.key)
    return sign_jws(header, t.claims(), signer, "ES256")


def attacker_jwk(t: Tokens) -> dict[str, Any]:
    return {k: v for k, v in t.attacker["RS256"].jwk.items() if k != "kid"}


NOW = lambda: int(time.time())  # noqa: E731 - read at build time

BUILDERS: Mapping[str, Callable[[Tokens], str]] = {
    # accepted
    "valid": lambda t: t.signed("RS256"),
    "valid_ps256": lambda t: t.signed("PS256"),
    "valid_es256": lambda t: t.signed("ES256"),
    "valid_eddsa": lambda t: t.signed("EdDSA"),
    "valid_aud_list": lambda t: t.signed(claims=t.claims(aud=["other-service", AUDIENCE])),
    "valid_no_roles": lambda t: t.signed(claims=t.claims(realm_access={"roles": []})),
    # algorithms
    "es384_not_allowed": lambda t: t.signed("ES384"),
    # `none` with the empty signature it calls for, and with a signature part so that the
    # algorithm check, not the token's shape, is what refuses it
    "alg_none": lambda t: t.unsigned("none"),
    "alg_none_with_signature": lambda t: t.unsigned("none", signature=b"\x01" * 256),
    "alg_None_with_signature": lambda t: t.unsigned("None", signature=b"\x01" * 256),
    "alg_NONE_with_signature": lambda t: t.unsigned("NONE", signature=b"\x01" * 256),
    "alg_nOnE_with_signature": lambda t: t.unsigned("nOnE", signature=b"\x01" * 256),
    "alg_none_unicode_escape": lambda t: raw_header_token(t, '{"alg":"\\u006eone","typ":"JWT"}'),
    "alg_duplicate_key_none_last": lambda t: raw_header_token(t, '{"alg":"RS256","alg":"none","typ":"JWT"}'),
    "alg_trailing_space": lambda t: t.signed(header={"alg": "RS256 "}),
    "alg_empty": lambda t: t.unsigned("", signature=b"\x01"),
    "alg_null": lambda t: t.unsigned(None, signature=b"\x01"),
    "alg_list": lambda t: t.unsigned(["RS256"], signature=b"\x01"),
    "alg_missing": lambda t: t.signed(header={"alg": OMIT}),
    "empty_signature": lambda t: t.signed().rsplit(".", 1)[0] + ".",
    "no_signature_part": lambda t: t.signed().rsplit(".", 1)[0],
    "hs256_with_public_pem": lambda t: t.confused("HS256", "RS256", "pem"),
    "hs256_with_public_pkcs1": lambda t: t.confused("HS256", "RS256", "pkcs1"),
    "hs256_with_public_der": lambda t: t.confused("HS256", "RS256", "der"),
    "hs256_with_public_jwk": lambda t: t.confused("HS256", "RS256", "jwk"),
    "hs256_with_public_openssh": lambda t: t.confused("HS256", "RS256", "openssh"),
    "hs384_with_public_pem": lambda t: t.confused("HS384", "RS256", "pem"),
    "hs512_with_public_der": lambda t: t.confused("HS512", "RS256", "der"),
    "hs256_with_ec_public_pem": lambda t: t.confused("HS256", "ES256", "pem"),
    "hs256_with_ec_public_jwk": lambda t: t.confused("HS256", "ES256", "jwk"),
    "hs256_with_eddsa_public_openssh": lambda t: t.confused("HS256", "EdDSA", "openssh"),
    "hs256_with_public_pem_no_kid": lambda t: t.confused("HS256", "RS256", "pem", kid=False),
    "rs256_with_ec_kid": lambda t: t.signed(
        "RS256", header={"kid": t.published["ES256"].kid}, key=t.published["RS256"]
    ),
    "ps256_with_rs256_kid": lambda t: t.signed("PS256", header={"kid": t.published["RS256"].kid}),
    # keys chosen by the token
    "unknown_kid": lambda t: t.by_attacker({"kid": "attacker-key-1"}),
    "random_unknown_kid": lambda t: t.by_attacker({"kid": f"attacker-{uuid.uuid4()}"}),
    "known_kid_attacker_signature": lambda t: t.by_attacker({"kid": t.published["RS256"].kid}),
    "embedded_jwk": lambda t: t.by_attacker({"jwk": attacker_jwk(t)}),
    "embedded_jwk_with_known_kid": lambda t: t.by_attacker(
        {"kid": t.published["RS256"].kid, "jwk": attacker_jwk(t)}
    ),
    "jku_header": lambda t: t.by_attacker({"kid": "attacker-key-2", "jku": t.canary_url + "/jku.json"}),
    "jku_with_known_kid": lambda t: t.by_attacker(
        {"kid": t.published["RS256"].kid, "jku": t.canary_url + "/jku.json"}
    ),
    "x5u_header": lambda t: t.by_attacker({"kid": "attacker-key-3", "x5u": t.canary_url + "/x5u.pem"}),
    "x5c_header": with_x5c,
    # kid
    "kid_traversal_dev_null": lambda t: hmac_jws(
        {"alg": "HS256", "typ": "JWT", "kid": "../../../../../../../dev/null"}, t.claims(), b""
    ),
    "kid_traversal_rs256": lambda t: t.by_attacker({"kid": "../../../../etc/passwd"}),
    "kid_sql": lambda t: hmac_jws(
        {"alg": "HS256", "typ": "JWT", "kid": "x' UNION SELECT 'secret' -- "}, t.claims(), b"secret"
    ),
    "kid_url": lambda t: t.by_attacker({"kid": t.canary_url + "/kid.json"}),
    "kid_long": lambda t: t.by_attacker({"kid": "k" * 9000}),
    "kid_number": lambda t: t.by_attacker({"kid": 123}),
    "kid_null": lambda t: t.by_attacker({"kid": None}),
    "kid_object": lambda t: t.by_attacker({"kid": {"$ne": None}}),
    "kid_nul_byte": lambda t: t.by_attacker({"kid": t.published["RS256"].kid + "\x00"}),
    # crit
    "crit_unknown": lambda t: t.signed(header={"crit": ["urn:example:unknown"], "urn:example:unknown": 1}),
    "crit_b64_false": lambda t: t.signed(header={"crit": ["b64"], "b64": False}),
    "crit_empty": lambda t: t.signed(header={"crit": []}),
    "crit_not_a_list": lambda t: t.signed(header={"crit": "exp"}),
    # issuer, compared exactly
    "iss_with_suffix": lambda t: t.signed(claims=t.claims(iss=t.issuer + "/evil")),
    "iss_prefix": lambda t: t.signed(claims=t.claims(iss=t.issuer[:-1])),
    "iss_trailing_slash": lambda t: t.signed(claims=t.claims(iss=t.issuer + "/")),
    "iss_superstring": lambda t: t.signed(claims=t.claims(iss="https://evil.example/?" + t.issuer)),
    "iss_upper_case": lambda t: t.signed(claims=t.claims(iss=t.issuer.upper())),
    "iss_list": lambda t: t.signed(claims=t.claims(iss=[t.issuer])),
    "iss_missing": lambda t: t.signed(claims=t.claims(iss=OMIT)),
    "iss_other": lambda t: t.signed(claims=t.claims(iss="https://accounts.example.com")),
    # audience
    "aud_wrong": lambda t: t.signed(claims=t.claims(aud="other-service")),
    "aud_list_wrong": lambda t: t.signed(claims=t.claims(aud=["other-service", "apix"])),
    "aud_prefix": lambda t: t.signed(claims=t.claims(aud=AUDIENCE[:-1])),
    "aud_superstring": lambda t: t.signed(claims=t.claims(aud=AUDIENCE + "2")),
    "aud_missing": lambda t: t.signed(claims=t.claims(aud=OMIT)),
    "aud_object": lambda t: t.signed(claims=t.claims(aud={AUDIENCE: True})),
    "aud_empty": lambda t: t.signed(claims=t.claims(aud="")),
    # times (leeway 30 s)
    "expired": lambda t: t.signed(claims=t.claims(exp=NOW() - 3600, iat=NOW() - 4000, nbf=NOW() - 4000)),
    "expired_beyond_leeway": lambda t: t.signed(claims=t.claims(exp=NOW() - 45)),
    "exp_missing": lambda t: t.signed(claims=t.claims(exp=OMIT)),
    "exp_string": lambda t: t.signed(claims=t.claims(exp=str(NOW() + 300))),
    "exp_bool": lambda t: t.signed(claims=t.claims(exp=True)),
    "exp_nan": lambda t: t.signed(claims=raw_claim(t, "exp", "NaN")),
    "exp_infinity": lambda t: t.signed(claims=raw_claim(t, "exp", "Infinity")),
    "exp_huge_integer": lambda t: t.signed(claims=raw_claim(t, "exp", "1" + "0" * 400)),
    "exp_huge_float": lambda t: t.signed(claims=raw_claim(t, "exp", "1e400")),
    "exp_4301_digits": lambda t: t.signed(claims=raw_claim(t, "exp", "9" * 4301)),
    "nbf_future": lambda t: t.signed(claims=t.claims(nbf=NOW() + 3600)),
    "nbf_huge_integer": lambda t: t.signed(claims=raw_claim(t, "nbf", "1" + "0" * 400)),
    "iat_huge_integer": lambda t: t.signed(claims=raw_claim(t, "iat", "-1" + "0" * 400)),
    "iat_future": lambda t: t.signed(claims=t.claims(iat=NOW() + 3600)),
    # sizes and shapes
    "oversize": lambda t: t.signed(claims=t.claims(padding="p" * 17000)),
    "jwe_5_parts": lambda t: ".".join(
        [b64url(json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM"}).encode()), "a", "b", "c", "d"]
    ),
    "four_parts": lambda t: t.signed() + ".extra",
    "padded_base64": lambda t: t.signed().replace(".", "==.", 1),
    "header_not_json": lambda t: b64url(b"not json") + "." + t.signed().split(".", 1)[1],
    "header_is_a_list": lambda t: b64url(b"[]") + "." + t.signed().split(".", 1)[1],
    "payload_not_utf8": lambda t: t.signed(claims=b"\xff\xfe{}"),
    "payload_is_a_list": lambda t: t.signed(claims=b"[1]"),
    # nested deeper than json.loads can recurse: refused before any signature work
    "deep_payload": lambda t: t.signed(claims=raw_claim(t, "nested", "[" * 5000 + "]" * 5000)),
    "deep_header": lambda t: deep_header(t),
    "deep_payload_object": lambda t: t.signed(
        claims=raw_claim(t, "nested", '{"a":' * 2000 + "1" + "}" * 2000)
    ),
    "long_number_in_claim": lambda t: t.signed(claims=raw_claim(t, "other", "1" * 4301)),
    "garbage": lambda t: "not-a-token-at-all",
    # claims that become headers
    "sub_crlf": lambda t: t.signed(claims=t.claims(sub="alice\r\nX-Injected: forged")),
    "sub_lf": lambda t: t.signed(claims=t.claims(sub="alice\nX-Injected: forged")),
    "sub_cr": lambda t: t.signed(claims=t.claims(sub="alice\rX-Injected: forged")),
    "sub_nul": lambda t: t.signed(claims=t.claims(sub="alice\x00forged")),
    "sub_del": lambda t: t.signed(claims=t.claims(sub="alice\x7fforged")),
    "sub_c1_nel": lambda t: t.signed(claims=t.claims(sub="alice\x85forged")),
    "sub_line_separator": lambda t: t.signed(claims=t.claims(sub="alice\u2028forged")),
    "sub_leading_space": lambda t: t.signed(claims=t.claims(sub=" alice")),
    "sub_too_long": lambda t: t.signed(claims=t.claims(sub="a" * 5000)),
    "sub_not_a_string": lambda t: t.signed(claims=t.claims(sub=12345)),
    "email_crlf": lambda t: t.signed(claims=t.claims(email="a@example.com\r\nX-Injected: forged")),
    "username_tab_lf": lambda t: t.signed(claims=t.claims(preferred_username="alice\t\nforged")),
    "role_crlf": lambda t: t.signed(
        claims=t.claims(realm_access={"roles": [ROLE, "admin\r\nX-Injected: 1"]})
    ),
    "role_nul": lambda t: t.signed(claims=t.claims(realm_access={"roles": [ROLE, "admin\x00"]})),
}

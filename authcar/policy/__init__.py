"""Authorization: Casbin policies from a mounted directory, decided without scanning every rule.

The pieces, each in its own module:
    engine.py     compile a model and policy into a `CompiledPolicy` whose decisions agree with
                  `casbin.Enforcer` but cost the same at 10 rules and at 10,000
    matcher.py    the model's matcher turned into a Python function once per policy
    functions.py  Casbin's matcher functions, each pattern prepared once per rule
    regex.py      Python `re` where backtracking is provably linear, RE2 otherwise
    index.py      the trie of path segments that picks candidate rules
    roles.py      which roles a subject reaches through `g` lines
    reload.py     read the policy directory, check a new version in full, swap it in atomically;
                  watch the directory (ConfigMap `..data` swaps) and reload on SIGHUP
    testing.py    `authcar policy test`: YAML cases run against a policy directory

What they share is defined here: the request the policy sees, the decision it gives, the error a
bad policy raises, and `authorize`, the one way the sidecar and `authcar policy test` decide.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from authcar.identity import Identity

MODEL_FILE = "model.conf"
POLICY_FILE = "policy.csv"

# Every caller carries one of these, so a policy can grant "anyone" or "any signed-in caller". Roles
# from tokens always carry the role prefix, so they can never take these names.
ANONYMOUS_ROLE = "authcar:anonymous"
AUTHENTICATED_ROLE = "authcar:authenticated"
BUILT_IN_ROLE_PREFIX = "authcar:"


class PolicyError(Exception):
    """A model or policy that cannot be used; `problems` lists every one found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """What a Casbin model's request definition may name.

    `r = sub, obj, act` is the usual shape; a model may also name `claims` (the token's claims, with
    attribute access such as `r.claims.email`), `iss` (the issuer) and `src` (how the caller was
    identified: jwt, introspection, session, client_certificate, anonymous).
    """

    subject: str  # r.sub
    roles: tuple[str, ...]  # linked to the subject for g(r.sub, p.sub), already prefixed
    path: str  # r.obj: the normalised path, exactly as it will be forwarded
    method: str  # r.act
    claims: Mapping[str, Any]  # r.claims
    issuer: str = ""  # r.iss
    source: str = "anonymous"  # r.src


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    # The policy line that decided (Casbin's explain): the matching allow rule, or the deny rule that
    # refused. Empty when no rule matched (the default deny).
    rule: tuple[str, ...]
    # "allowed", "no_matching_rule", "denied_by_rule", "subject_looks_like_role", or "error" (a bug in
    # the engine: a denial)
    reason: str
    policy_version: str


def policy_request(identity: Identity, method: str, path: str, role_prefix: str) -> PolicyRequest:
    """The request a policy decides on: the identity's roles become Casbin roles under a prefix.

    The prefix (default `role:`) keeps subjects and IdP roles in separate namespaces, so a user whose
    subject happens to be `admin` never gains the rules written for the role `admin`. One built-in
    role says whether the caller was identified at all.
    """
    roles = [role_prefix + role for role in identity.roles]
    roles.append(ANONYMOUS_ROLE if identity.is_anonymous else AUTHENTICATED_ROLE)
    return PolicyRequest(
        subject=identity.subject,
        roles=tuple(sorted(roles)),
        path=path,
        method=method,
        claims=identity.claims,
        issuer=identity.issuer,
        source=identity.source,
    )


class Policy(Protocol):
    """What deciding needs of a compiled policy (authcar.policy.engine.CompiledPolicy)."""

    version: str

    def decide(self, request: PolicyRequest) -> Decision: ...


def authorize(
    policy: Policy, identity: Identity, method: str, path: str, role_prefix: str
) -> tuple[PolicyRequest, Decision]:
    """The decision for one request, exactly as the sidecar makes it (and `authcar policy test`).

    In Casbin `g(a, b)` holds when a == b, so a subject spelled like a role (`role:admin`, or a
    built-in `authcar:...`) would match that role's rules directly: such a subject is refused.
    """
    request = policy_request(identity, method, path, role_prefix)
    subject = identity.subject
    if subject and (subject.startswith(BUILT_IN_ROLE_PREFIX) or subject.startswith(role_prefix)):
        return request, Decision(False, (), "subject_looks_like_role", policy.version)
    return request, policy.decide(request)

"""Mistakes a policy that loads can still hold, named for `check-config` and the start.

Neither is an error (the policy does what it says), but each makes requests fail in a way that
looks like a bug elsewhere: a public path the policy refuses to anonymous callers (401 on a path
that was meant to need nothing), and a rule written for a role by its bare name (`p, viewer, ...`),
which Casbin compares with the caller's subject, so it never matches a token's role `viewer`.
"""

from __future__ import annotations

from collections.abc import Sequence

from authcar.identity import ANONYMOUS
from authcar.paths import PublicPathRule, parse_public_path
from authcar.policy import BUILT_IN_ROLE_PREFIX, authorize
from authcar.policy.engine import CompiledPolicy

PUBLIC_PATHS_SETTING = "AUTHCAR_PUBLIC_PATHS"


def example_requests(rule: PublicPathRule) -> tuple[list[str], str, str]:
    """The methods and one path the public-path rule makes public (for a prefix, its directory
    itself), and the keyMatch2 pattern of a rule that would allow them all. Any method: GET stands
    for all."""
    methods = ["GET"] if rule.methods is None else sorted(rule.methods)
    return methods, rule.pattern, rule.pattern + "*" if rule.prefix else rule.pattern


def public_path_warnings(policy: CompiledPolicy, public_paths: Sequence[str], role_prefix: str) -> list[str]:
    """Each public path whose requests the policy refuses to an anonymous caller."""
    warnings = []
    for entry in public_paths:
        methods, path, pattern = example_requests(parse_public_path(entry))
        refused = [m for m in methods if not authorize(policy, ANONYMOUS, m, path, role_prefix)[1].allowed]
        if refused:
            warnings.append(
                f"{PUBLIC_PATHS_SETTING}: {entry!r} skips authentication, but the policy does not allow"
                f" {'|'.join(refused)} {path} to authcar:anonymous, so those requests get 401; add a rule"
                f" such as `p, authcar:anonymous, {pattern}, ...`"
            )
    return warnings


def bare_role_subjects(policy: CompiledPolicy, role_prefix: str) -> dict[str, list[tuple[str, ...]]]:
    """Rule subjects that may be a role written without its prefix, with their rules: not
    prefixed, not built in, and not a name the `g` lines give a meaning to."""
    found: dict[str, list[tuple[str, ...]]] = {}
    for subject, rule in policy.subject_rules:
        if subject.startswith((role_prefix, BUILT_IN_ROLE_PREFIX)) or subject in policy.linked_names:
            continue
        # `*`, e-mail addresses, `auth0|...`, URIs and client ids `X@clients` are subjects, not roles.
        if not subject or subject == "*" or any(c in subject for c in "@|:/"):
            continue
        found.setdefault(subject, []).append(rule)
    return found


def bare_role_warnings(policy: CompiledPolicy, role_prefix: str) -> list[str]:
    return [
        f"policy: `p, {', '.join(rules[0])}` names {subject!r}, which is compared with the caller's"
        f" subject (`sub`); if {subject!r} is a role from tokens, write {role_prefix}{subject}"
        + (f" ({len(rules)} rules)" if len(rules) > 1 else "")
        for subject, rules in bare_role_subjects(policy, role_prefix).items()
    ]


def policy_warnings(policy: CompiledPolicy, public_paths: Sequence[str], role_prefix: str) -> list[str]:
    return public_path_warnings(policy, public_paths, role_prefix) + bare_role_warnings(policy, role_prefix)


class BareRoleDenials:
    """Which denials a bare-role rule may explain, each rule reported once per policy version.

    A caller with the role `viewer` denied while a rule names `viewer` as its subject is the mistake
    as it happens: the log names the rule once, not once per request.
    """

    def __init__(self, role_prefix: str) -> None:
        self.role_prefix = role_prefix
        self._version = ""
        self._by_role: dict[str, list[tuple[str, ...]]] = {}
        self._reported: set[tuple[str, ...]] = set()

    def unreported(self, policy: CompiledPolicy, roles: frozenset[str]) -> list[tuple[str, tuple[str, ...]]]:
        """(role, rule) pairs not reported yet for this policy version; marks them reported."""
        if policy.version != self._version:
            self._version = policy.version
            self._by_role = bare_role_subjects(policy, self.role_prefix)
            self._reported = set()
        if not self._by_role:
            return []
        found = []
        for role in roles:
            for rule in self._by_role.get(role, ()):
                if rule not in self._reported:
                    self._reported.add(rule)
                    found.append((role, rule))
        return found

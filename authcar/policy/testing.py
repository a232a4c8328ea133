"""`authcar policy test`: YAML cases decided by a policy directory exactly as the sidecar would decide them.

A case file is a YAML list of cases:

    - name: a reader may read a book
      identity: {subject: alice, roles: [reader]}     # or `claims:` (a token's claims), or `anonymous`
      method: GET
      path: /books/42
      expect: allow                                    # allow | deny
      rule: [role:reader, /books/:id, ^(GET|HEAD)$, allow, "*"]   # optional; [] = no rule matched

The path is normalised the way the sidecar normalises it before the policy sees it; a path the
sidecar would refuse with 400 is a case error, not a denial. Roles get the role prefix and the
built-in roles (`authcar:anonymous` / `authcar:authenticated`) exactly as in the sidecar. Every
failure is one line with what was expected, what the policy decided and the rule that decided.
Exit status 1 when any case fails, any case or file is invalid, the policy is refused, or nothing ran.
"""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

import yaml

from authcar.claims import ClaimMapping, TokenRejected
from authcar.errors import BadRequest
from authcar.identity import ANONYMOUS, Identity
from authcar.paths import normalise_path
from authcar.policy import PolicyError, authorize, policy_request
from authcar.policy.engine import CompiledPolicy
from authcar.policy.reload import load_policy

CASE_KEYS = frozenset({"name", "identity", "claims", "method", "path", "expect", "rule"})
IDENTITY_KEYS = frozenset({"subject", "roles", "claims", "issuer"})
EXPECTATIONS = {"allow": True, "deny": False}
CASE_FILE_SUFFIXES = (".yaml", ".yml")
DEFAULT_POLICY_DIR = "policies"
DEFAULT_ROLE_PREFIX = "role:"


class CaseError(Exception):
    """A case that cannot be run as written."""


@dataclass(frozen=True, slots=True)
class Case:
    where: str  # file:line, for the report
    name: str
    identity: Identity
    method: str
    path: str  # normalised
    expect_allowed: bool
    rule: tuple[str, ...] | None  # None: any rule will do


@dataclass(slots=True)
class Tally:
    passed: int = 0
    failed: int = 0
    invalid: int = 0


# -- reading cases ------------------------------------------------------------------------------


def case_files(paths: Sequence[Path]) -> Iterator[Path]:
    """The files named, and the *.yaml / *.yml files (sorted) of the directories named."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.iterdir() if p.suffix in CASE_FILE_SUFFIXES and p.is_file())
        else:
            yield path


def load_cases(path: Path, claim_mapping: ClaimMapping) -> tuple[list[Case], list[str]]:
    """The valid cases of one file, and one message per invalid case (or for the whole file)."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"{path}: cannot read: {exc}"]
    except yaml.YAMLError as exc:
        return [], [f"{path}: not valid YAML: {exc}"]
    if not isinstance(root, yaml.SequenceNode) or not root.value:
        return [], [f"{path}: a case file must be a non-empty YAML list of cases"]
    cases: list[Case] = []
    errors: list[str] = []
    for index, node in enumerate(root.value, start=1):
        where = f"{path}:{node.start_mark.line + 1}"
        try:
            raw = yaml.SafeLoader("").construct_document(node)
            cases.append(parse_case(raw, where, claim_mapping))
        except (CaseError, yaml.YAMLError) as exc:
            errors.append(f"{where}: case {index}: {exc}")
    return cases, errors


def parse_case(raw: Any, where: str, claim_mapping: ClaimMapping) -> Case:
    if not isinstance(raw, dict):
        raise CaseError("a case must be a mapping")
    unknown = sorted(set(map(str, raw)) - CASE_KEYS)
    if unknown:
        raise CaseError(f"unknown keys {unknown}; a case has {sorted(CASE_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CaseError("`name` is required")
    try:
        return Case(
            where=where,
            name=name,
            identity=case_identity(raw, claim_mapping),
            method=case_method(raw.get("method")),
            path=case_path(raw.get("path")),
            expect_allowed=case_expectation(raw.get("expect")),
            rule=expected_rule(raw["rule"]) if "rule" in raw else None,
        )
    except CaseError as exc:
        raise CaseError(f"{name!r}: {exc}") from None


def case_identity(raw: Mapping[str, Any], claim_mapping: ClaimMapping) -> Identity:
    if ("identity" in raw) == ("claims" in raw):
        raise CaseError("give exactly one of `identity` (subject, roles, claims) and `claims`")
    if "claims" in raw:
        claims = raw["claims"]
        if not isinstance(claims, dict):
            raise CaseError("`claims` must be a mapping of claim names to values")
        issuer = claims.get("iss", "")
        try:
            # The sidecar's own mapping: the subject and roles come from the same claims it reads.
            return claim_mapping.identity(claims, issuer if isinstance(issuer, str) else "", "jwt")
        except TokenRejected as exc:
            raise CaseError(f"the sidecar would refuse these claims: {exc}") from None
    spec = raw["identity"]
    if spec == "anonymous":
        return ANONYMOUS
    if not isinstance(spec, dict):
        raise CaseError("`identity` must be `anonymous` or a mapping with subject, roles, claims")
    unknown = sorted(set(map(str, spec)) - IDENTITY_KEYS)
    if unknown:
        raise CaseError(f"unknown identity keys {unknown}; an identity has {sorted(IDENTITY_KEYS)}")
    subject = spec.get("subject", "")
    roles = spec.get("roles", [])
    claims = spec.get("claims")
    issuer = spec.get("issuer", "")
    if not isinstance(subject, str) or not isinstance(issuer, str):
        raise CaseError("identity `subject` and `issuer` must be strings")
    if not isinstance(roles, list) or not all(isinstance(role, str) and role for role in roles):
        raise CaseError("identity `roles` must be a list of non-empty strings (without the role prefix)")
    if claims is not None and not isinstance(claims, dict):
        raise CaseError("identity `claims` must be a mapping")
    if not subject:
        if roles or claims:
            raise CaseError("an identity without a subject is anonymous and has no roles or claims")
        return ANONYMOUS
    if claims is None:
        claims = {claim_mapping.subject_claim: subject}  # what a token for this subject would carry
    return Identity(
        subject=subject,
        issuer=issuer,
        roles=frozenset(roles),
        claims=MappingProxyType(dict(claims)),
        source="jwt",
    )


def case_method(method: Any) -> str:
    if not isinstance(method, str) or not method or not method.isascii() or not method.isalpha():
        raise CaseError(f"`method` must be an HTTP method such as GET, got {method!r}")
    return method


def case_path(path: Any) -> str:
    if not isinstance(path, str) or not path:
        raise CaseError(f"`path` must be a string starting with /, got {path!r}")
    try:
        raw = path.encode("ascii")
    except UnicodeEncodeError:
        raise CaseError(
            f"path {path!r} is not ASCII: write it percent-encoded as a client sends it"
        ) from None
    try:
        return normalise_path(raw)
    except BadRequest as exc:
        raise CaseError(
            f"path {path!r} is refused with 400 ({exc.code}) before any policy sees it: "
            "it cannot be a policy case"
        ) from None


def case_expectation(expect: Any) -> bool:
    if expect not in EXPECTATIONS:
        raise CaseError(f"`expect` must be allow or deny, got {expect!r}")
    return EXPECTATIONS[expect]


def expected_rule(rule: Any) -> tuple[str, ...]:
    """A rule as a list of fields or as one CSV line; [] or "" means "no rule matched"."""
    if rule is None or rule == "":
        return ()
    if isinstance(rule, str):
        fields = next(csv.reader([rule], skipinitialspace=True))
    elif isinstance(rule, list) and all(isinstance(field, str) for field in rule):
        fields = rule
    else:
        raise CaseError("`rule` must be a list of strings or one comma-separated line")
    return rule_fields(fields)


def rule_fields(rule: Sequence[str]) -> tuple[str, ...]:
    """Fields compared without surrounding blanks and without the leading policy type (`p`)."""
    fields = tuple(field.strip() for field in rule)
    if fields and fields[0] == "p":
        fields = fields[1:]
    return fields


# -- running ------------------------------------------------------------------------------------


def show_verdict(allowed: bool, rule: Sequence[str] | None) -> str:
    verdict = "allow" if allowed else "deny"
    if rule is None:
        return verdict
    return f"{verdict} by rule [{', '.join(rule)}]" if rule else f"{verdict} (no rule matched)"


def run_case(case: Case, policy: CompiledPolicy, role_prefix: str) -> str | None:
    """None when the case passes, else its one-line failure report."""
    request = policy_request(case.identity, case.method, case.path, role_prefix)
    who = case.identity.subject or "anonymous"
    heading = (
        f"FAIL {case.where}: {case.name}: {case.method} {case.path} as {who} [{', '.join(request.roles)}]"
    )
    try:
        _, decision = authorize(policy, case.identity, case.method, case.path, role_prefix)
    except Exception as exc:  # the sidecar would deny; the case author needs to know why
        return f"{heading}: deciding raised {type(exc).__name__}: {exc}"
    actual_rule = rule_fields(decision.rule)
    if decision.allowed == case.expect_allowed and (case.rule is None or case.rule == actual_rule):
        return None
    expected = show_verdict(case.expect_allowed, case.rule)
    actual = show_verdict(decision.allowed, actual_rule)
    return f"{heading}: expected {expected}, got {actual}"


def run_policy_tests(
    files: list[Path],
    policy_dir: Path,
    role_prefix: str,
    out: TextIO,
    *,
    claim_mapping: ClaimMapping | None = None,
) -> int:
    """Run every case of `files` (files or directories of *.yaml) against `policy_dir`; 0 or 1."""
    mapping = claim_mapping or ClaimMapping()
    try:
        policy = load_policy(policy_dir, role_prefix)
    except PolicyError as error:
        for problem in error.problems:
            print(f"ERROR policy {policy_dir}: {problem}", file=out)
        print(f"policy test: the policy in {policy_dir} was refused; no case ran", file=out)
        return 1
    tally = Tally()
    for path in case_files(files):
        cases, errors = load_cases(path, mapping)
        for error in errors:
            print(f"ERROR {error}", file=out)
        tally.invalid += len(errors)
        for case in cases:
            failure = run_case(case, policy, role_prefix)
            if failure is None:
                tally.passed += 1
            else:
                tally.failed += 1
                print(failure, file=out)
    print(
        f"policy test: {tally.passed} passed, {tally.failed} failed, {tally.invalid} invalid "
        f"(policy {policy.version} from {policy_dir}, {policy.rule_count} rules)",
        file=out,
    )
    if tally.passed + tally.failed == 0:
        print("policy test: no case ran", file=out)
        return 1
    return 1 if tally.failed or tally.invalid else 0


# -- command line -------------------------------------------------------------------------------


def add_policy_test_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `authcar policy test`."""
    parser.add_argument(
        "files", nargs="+", type=Path, metavar="FILE", help="case files, or directories of *.yaml case files"
    )
    parser.add_argument(
        "--policy-dir",
        type=Path,
        default=None,
        help=f"directory with model.conf and policy.csv [AUTHCAR_POLICY_DIR, default {DEFAULT_POLICY_DIR}]",
    )
    parser.add_argument(
        "--role-prefix",
        default=None,
        help=f"prefix of token roles in policies [AUTHCAR_POLICY_ROLE_PREFIX, default {DEFAULT_ROLE_PREFIX}]",
    )
    parser.add_argument(
        "--subject-claim",
        default=None,
        help="claim naming the subject in `claims:` cases [AUTHCAR_SUBJECT_CLAIM]",
    )
    parser.add_argument(
        "--roles-claim",
        default=None,
        help="comma-separated claims holding roles in `claims:` cases [AUTHCAR_ROLES_CLAIM]",
    )


def policy_test_command(
    args: argparse.Namespace, out: TextIO, environ: Mapping[str, str] = os.environ
) -> int:
    """`authcar policy test`: flag, else environment variable, else default."""
    defaults = ClaimMapping()
    policy_dir = args.policy_dir or Path(environ.get("AUTHCAR_POLICY_DIR") or DEFAULT_POLICY_DIR)
    role_prefix = args.role_prefix
    if role_prefix is None:
        role_prefix = environ.get("AUTHCAR_POLICY_ROLE_PREFIX", DEFAULT_ROLE_PREFIX)
    subject_claim = args.subject_claim or environ.get("AUTHCAR_SUBJECT_CLAIM") or defaults.subject_claim
    roles_claim = args.roles_claim or environ.get("AUTHCAR_ROLES_CLAIM")
    role_claims = (
        tuple(c.strip() for c in roles_claim.split(",") if c.strip()) if roles_claim else defaults.role_claims
    )
    mapping = ClaimMapping(subject_claim=subject_claim, role_claims=role_claims)
    return run_policy_tests(list(args.files), policy_dir, role_prefix, out, claim_mapping=mapping)

"""`authcar policy test`: the book-service policy passes its own cases, and failures are reported clearly."""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

import pytest

from authcar.policy import POLICY_FILE
from authcar.policy.testing import add_policy_test_arguments, policy_test_command, run_policy_tests

ROOT = Path(__file__).resolve().parents[2]
BOOK_POLICY = ROOT / "policies"
BOOK_CASES = BOOK_POLICY / "tests"


def run(files: list[Path], policy_dir: Path = BOOK_POLICY, role_prefix: str = "role:") -> tuple[int, str]:
    out = io.StringIO()
    status = run_policy_tests(files, policy_dir, role_prefix, out)
    return status, out.getvalue()


def case_file(tmp_path: Path, text: str, name: str = "cases.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_book_service_policy_passes_its_cases() -> None:
    status, output = run([BOOK_CASES])
    assert status == 0, output
    *failures, summary = output.splitlines()
    assert failures == []
    passed = int(summary.split("policy test: ")[1].split(" passed")[0])
    assert passed >= 100  # every role x endpoint, reviews, paths, identities
    assert " 0 failed, 0 invalid " in summary


FAILING = """\
- name: a reader may delete a book
  identity: {subject: alice, roles: [reader]}
  method: DELETE
  path: /books/1
  expect: allow

- name: an editor may not create books
  claims: {sub: bob, roles: [editor]}
  method: POST
  path: /books
  expect: deny

- name: the admin's delete comes from the reader rule
  identity: {subject: carol, roles: [admin]}
  method: DELETE
  path: /books/1/reviews/alice
  expect: allow
  rule: "role:reader, /books/:id/reviews/:reviewer, ^(PUT|DELETE)$, allow, reviewer"

- name: this one passes
  identity: anonymous
  method: GET
  path: /healthz
  expect: allow
"""


def test_failures_show_expected_actual_and_the_rule(tmp_path: Path) -> None:
    path = case_file(tmp_path, FAILING)
    status, output = run([path])
    assert status == 1
    lines = output.splitlines()
    assert lines == [
        f"FAIL {path}:1: a reader may delete a book: DELETE /books/1 as alice "
        "[authcar:authenticated, role:reader]: expected allow, got deny (no rule matched)",
        f"FAIL {path}:7: an editor may not create books: POST /books as bob "
        "[authcar:authenticated, role:editor]: expected deny, "
        "got allow by rule [role:editor, /books, ^POST$, allow, *]",
        f"FAIL {path}:13: the admin's delete comes from the reader rule: DELETE /books/1/reviews/alice as "
        "carol [authcar:authenticated, role:admin]: expected allow by rule "
        "[role:reader, /books/:id/reviews/:reviewer, ^(PUT|DELETE)$, allow, reviewer], "
        "got allow by rule [role:admin, /books/:id/reviews/:reviewer, ^DELETE$, allow, *]",
        lines[3],
    ]
    assert lines[3].startswith("policy test: 1 passed, 3 failed, 0 invalid (policy ")


INVALID = """\
- name: a traversal is not a policy case
  identity: {subject: alice, roles: [reader]}
  method: GET
  path: /healthz/../audit
  expect: deny
- name: a typo in a key
  identity: {subject: alice, roles: [reader]}
  method: GET
  path: /books
  expected: allow
- name: both ways to name the caller
  identity: {subject: alice}
  claims: {sub: alice}
  method: GET
  path: /books
  expect: allow
- name: YAML booleans are not verdicts
  identity: anonymous
  method: GET
  path: /healthz
  expect: yes
- name: an encoded slash is not a policy case
  identity: anonymous
  method: GET
  path: /books/1%2F2
  expect: deny
- name: claims the sidecar would refuse
  claims: {roles: [admin]}
  method: GET
  path: /audit
  expect: deny
- name: the valid one still runs
  identity: anonymous
  method: GET
  path: /healthz
  expect: allow
"""


def test_invalid_cases_are_errors_and_the_rest_still_run(tmp_path: Path) -> None:
    path = case_file(tmp_path, INVALID)
    status, output = run([path])
    assert status == 1
    *errors, summary = output.splitlines()
    assert len(errors) == 6
    assert all(e.startswith(f"ERROR {path}:") for e in errors)
    assert "refused with 400 (dot_segment)" in errors[0]
    assert "unknown keys ['expected']" in errors[1]
    assert "exactly one of `identity`" in errors[2]
    assert "`expect` must be allow or deny, got True" in errors[3]
    assert "(encoded_slash)" in errors[4]
    assert "the sidecar would refuse these claims" in errors[5]
    assert summary.startswith("policy test: 1 passed, 0 failed, 6 invalid")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: not a list\n", "must be a non-empty YAML list"),
        ("[]\n", "must be a non-empty YAML list"),
        ("- name: [unclosed\n", "not valid YAML"),
    ],
)
def test_invalid_case_files_fail_the_run(tmp_path: Path, text: str, message: str) -> None:
    path = case_file(tmp_path, text)
    status, output = run([path])
    assert status == 1
    assert output.splitlines()[0].startswith(f"ERROR {path}: ")
    assert message in output


def test_no_cases_at_all_fails(tmp_path: Path) -> None:
    empty = tmp_path / "no-cases"
    empty.mkdir()
    status, output = run([empty])
    assert status == 1
    assert output.splitlines()[-1] == "policy test: no case ran"


def test_a_refused_policy_fails_before_any_case(tmp_path: Path) -> None:
    broken = tmp_path / "policy"
    shutil.copytree(BOOK_POLICY, broken, ignore=shutil.ignore_patterns("tests"))
    (broken / POLICY_FILE).write_text("g, role:admin, role:editor\n")
    status, output = run([BOOK_CASES], policy_dir=broken)
    assert status == 1
    error, summary = output.splitlines()
    assert error.startswith(f"ERROR policy {broken}: ")
    assert "no `p` rules" in error
    assert summary == f"policy test: the policy in {broken} was refused; no case ran"


def test_role_prefix_changes_which_rules_apply(tmp_path: Path) -> None:
    cases = case_file(
        tmp_path,
        "- name: reader reads\n  identity: {subject: alice, roles: [reader]}\n"
        "  method: GET\n  path: /books\n  expect: allow\n",
    )
    assert run([cases])[0] == 0
    status, output = run([cases], role_prefix="group:")
    assert status == 1
    assert "[authcar:authenticated, group:reader]: expected allow, got deny" in output


def test_command_line_takes_flags_then_environment(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_policy_test_arguments(parser)
    claims_case = case_file(
        tmp_path,
        "- name: roles from a custom claim\n  claims: {uid: carol, perms: [admin]}\n"
        "  method: GET\n  path: /audit\n  expect: allow\n",
    )
    environ = {"AUTHCAR_POLICY_DIR": str(BOOK_POLICY), "AUTHCAR_SUBJECT_CLAIM": "uid"}

    out = io.StringIO()
    args = parser.parse_args([str(claims_case), "--roles-claim", "perms"])
    assert policy_test_command(args, out, environ) == 0, out.getvalue()
    assert f"from {BOOK_POLICY}," in out.getvalue()

    out = io.StringIO()
    args = parser.parse_args([str(claims_case)])  # roles claim by default: groups, roles, realm_access
    assert policy_test_command(args, out, environ) == 1
    assert "expected allow, got deny" in out.getvalue()

    out = io.StringIO()
    args = parser.parse_args(
        [str(claims_case), "--policy-dir", str(tmp_path / "missing"), "--roles-claim", "perms"]
    )
    assert policy_test_command(args, out, environ) == 1
    assert "does not exist" in out.getvalue()

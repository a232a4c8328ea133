"""Command line: `authcar [run|check-config|policy test|settings|demo]`; every setting is also a flag
of `run` and `check-config`."""

from __future__ import annotations

import argparse
import os
import sys
import typing
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from authcar import __version__
from authcar.config import (
    ConfigError,
    LoadedSettings,
    Problem,
    Settings,
    env_name,
    load_settings,
    setting_docs,
)
from authcar.policy.testing import add_policy_test_arguments


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each also read from the environment variable shown)")
    hints = typing.get_type_hints(Settings)
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        metavar = "BOOL" if hints[f.name] is bool else f.name.split("_")[-1].upper()
        group.add_argument(
            flag,
            dest=f.name,
            default=None,
            metavar=metavar,
            help=f"{f.metadata['help']} [{env_name(f.name)}]",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="authcar",
        description="Authentication and authorization sidecar in front of an app on localhost.",
        epilog="Without a command, `run` is assumed. Precedence: flag > AUTHCAR_* env > YAML > default.",
    )
    parser.add_argument("--version", action="version", version=f"authcar {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command")
    run = commands.add_parser("run", help="serve the sidecar (the default)")
    add_setting_flags(run)
    check = commands.add_parser(
        "check-config", help="validate the configuration, print every problem, exit 0 or 1"
    )
    add_setting_flags(check)
    commands.add_parser("settings", help="list every setting with its environment variable and default")
    policy = commands.add_parser("policy", help="policy tools")
    policy_commands = policy.add_subparsers(dest="policy_command", metavar="command", required=True)
    add_policy_test_arguments(
        policy_commands.add_parser(
            "test", help="run YAML policy cases against a policy directory; exit 0 or 1"
        )
    )
    demo = commands.add_parser(
        "demo", help="run a local demo: an upstream app and the sidecar in front of it"
    )
    demo.add_argument("--port", type=int, default=4180, help="public port of the demo sidecar")
    demo.add_argument("--admin-port", type=int, default=9901, help="admin port of the demo sidecar")
    return parser


def load(args: argparse.Namespace) -> LoadedSettings:
    flags: dict[str, Any] = {f.name: getattr(args, f.name, None) for f in fields(Settings)}
    return load_settings(flags)


def preflight(settings: Settings) -> tuple[list[Problem], list[Problem]]:
    """Checks that need more than the settings themselves: can the certificate, key and policy files
    be used? Returns the problems, and warnings about a policy that loads but likely misleads."""
    from authcar.assertion import AssertionKeyError, load_private_key_file
    from authcar.policy import PolicyError
    from authcar.policy.diagnostics import policy_warnings
    from authcar.policy.reload import load_policy

    problems: list[Problem] = []
    warnings: list[Problem] = []
    try:
        policy = load_policy(settings.policy_dir, settings.policy_role_prefix)
    except PolicyError as error:
        problems.extend(
            Problem("policy_dir", f"{env_name('policy_dir')} ({settings.policy_dir}): {p}")
            for p in error.problems
        )
    else:
        found = policy_warnings(policy, settings.public_paths, settings.policy_role_prefix)
        warnings = [Problem("policy_dir", text) for text in found]
    if settings.assertion_key_file is not None:
        try:
            load_private_key_file(settings.assertion_key_file)
        except AssertionKeyError as exc:
            problems.append(Problem("assertion_key_file", f"{env_name('assertion_key_file')}: {exc}"))
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        from authcar.tls import CertificateStore, TLSConfigError

        try:
            CertificateStore(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
        except TLSConfigError as exc:
            problems.append(
                Problem("tls_cert_file", f"TLS: {exc}", also=("tls_key_file", "tls_client_ca_file"))
            )
    from authcar.otel_env import protocol_problem

    if (tracing_problem := protocol_problem(os.environ)) is not None:
        problems.append(Problem("", tracing_problem))  # an OpenTelemetry variable, not a setting
    return problems, warnings


def print_warnings(warnings: Sequence[Problem]) -> None:
    for warning in warnings:
        print(f"authcar: warning: {warning}", file=sys.stderr)


def print_problems(error: ConfigError) -> None:
    print(f"authcar: configuration has {len(error.problems)} problem(s):", file=sys.stderr)
    for problem in error.problems:
        print(f"  - {problem}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("--") and argv[0] not in ("--help", "-h", "--version")):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)

    if args.command == "settings":
        for name, default, help_text in setting_docs():
            print(f"{name:<40} {default:<24} {help_text}")
        return 0
    if args.command == "policy":
        from authcar.policy.testing import policy_test_command

        return policy_test_command(args, sys.stdout)
    if args.command == "demo":
        from authcar.demo import run_demo

        return run_demo(port=args.port, admin_port=args.admin_port)

    try:
        loaded = load(args)
    except ConfigError as error:
        print_warnings(error.warnings)
        print_problems(error)
        return 1
    print_warnings(loaded.warnings)
    problems, warnings = preflight(loaded.settings)
    print_warnings(warnings)
    if problems:
        print_problems(ConfigError(problems))
        return 1
    if args.command == "check-config":
        print("authcar: configuration is valid")
        return 0

    from authcar.server import run

    try:
        return run(loaded.settings)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())

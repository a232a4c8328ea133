"""The listeners: addresses, ports, processes, TLS and the clients they trust."""

from __future__ import annotations

import ipaddress

from authcar.config.problems import Problem
from authcar.config.settings import Settings, env_name
from authcar.config.validation.checks import problem

TLS_FILES = ("tls_cert_file", "tls_key_file", "tls_client_ca_file")


def validate_listener(s: Settings) -> list[Problem]:
    problems: list[Problem] = []
    for name in ("port", "admin_port"):
        port = getattr(s, name)
        if not 0 <= port <= 65535:
            problems.append(problem(name, f"{port} is not a TCP port (0-65535)"))
    if not problems and s.port == s.admin_port and s.port != 0 and s.host == s.admin_host:
        problems.append(
            Problem(
                "admin_port",
                f"{env_name('port')} and {env_name('admin_port')} are both {s.port}",
                also=("port", "host", "admin_host"),
            )
        )
    if s.workers < 1:
        problems.append(problem("workers", "must be at least 1"))
    problems.extend(validate_tls(s))
    for network in s.trusted_proxies:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            problems.append(problem("trusted_proxies", f"{network!r} is not an IP address or CIDR network"))
    return problems


def validate_tls(s: Settings) -> list[Problem]:
    problems: list[Problem] = []
    if (s.tls_cert_file is None) != (s.tls_key_file is None):
        problems.append(
            Problem(
                "tls_cert_file",
                f"{env_name('tls_cert_file')} and {env_name('tls_key_file')} must be set together",
                also=("tls_key_file",),
            )
        )
    if s.tls_client_ca_file is not None and s.tls_cert_file is None:
        problems.append(
            Problem(
                "tls_client_ca_file",
                f"{env_name('tls_client_ca_file')} needs TLS ({env_name('tls_cert_file')}) to be set",
                also=("tls_cert_file",),
            )
        )
    for name in TLS_FILES:
        path = getattr(s, name)
        if path is not None and not path.is_file():
            problems.append(problem(name, f"{path} does not exist or is not a file"))
    for needs_client_certificates in ("tls_client_cert_identity", "tls_forward_client_cert"):
        if getattr(s, needs_client_certificates) and s.tls_client_ca_file is None:
            problems.append(
                Problem(
                    needs_client_certificates,
                    f"{env_name(needs_client_certificates)} needs client certificates"
                    f" ({env_name('tls_client_ca_file')})",
                    also=("tls_client_ca_file",),
                )
            )
    return problems

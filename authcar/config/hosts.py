"""The syntax of host names in settings (AUTHCAR_ALLOWED_REDIRECT_HOSTS entries): plain enough that
every URL parser reads them alike, so a host a setting names is the host a browser goes to.

A DNS name of ASCII labels (write IDN hosts in punycode) or a dotted-decimal IPv4 address, lower
case, optionally `:port`. A last label that browsers read as a number (`1`, `0x7f`) makes the WHATWG
parser read the whole host as IPv4 (`127.1` is 127.0.0.1), so it is allowed only in canonical form.
"""

from __future__ import annotations

import re

DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
IPV4_OCTET = re.compile(r"25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]")
NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
MAX_HOST_BYTES = 253


def valid_host(host: str) -> bool:
    labels = host.split(".")
    if len(host) > MAX_HOST_BYTES or not all(DNS_LABEL.fullmatch(label) for label in labels):
        return False
    if NUMERIC_LABEL.fullmatch(labels[-1]):
        return len(labels) == 4 and all(IPV4_OCTET.fullmatch(label) for label in labels)
    return True


def valid_port(port: str) -> bool:
    return port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536


def split_host_port(value: str) -> tuple[str, int | None]:
    """`host` or `host:port`, lower-cased; ValueError naming the entry for anything else."""
    host, colon, port = value.strip().lower().partition(":")
    if not valid_host(host) or (colon and not valid_port(port)):
        raise ValueError(f"not a host or host:port: {value!r}")
    return host, int(port) if colon else None

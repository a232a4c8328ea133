"""The C gateways authcar is measured against: HAProxy `jwt_verify` and Apache mod_auth_openidc.

Each verifies the run's RS256 token on every request (signature against the provider's key, plus
`iss`, `aud` and `exp`), then proxies to the same upstream route over a keep-alive pool. Each
instance lives in its own temp prefix and runs in the foreground: no system service, no /etc file
is used or touched. The binaries come from Debian packages, installed by the harness when it runs as
root (`apt-get install -y --no-install-recommends ...`) and otherwise named in the row it skips.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from procs import Children, free_port, wait_tcp

APACHE_MODULES = Path("/usr/lib/apache2/modules")
APACHE_THREADS = 64  # one process x 64 threads, as in issue 14's table


@dataclass(frozen=True)
class Tool:
    """A binary a row needs, and the Debian packages that provide it."""

    binary: str
    packages: tuple[str, ...]
    candidates: tuple[str, ...] = ()  # absolute paths tried when it is not on PATH
    also: tuple[str, ...] = ()  # files that must exist too (Apache modules)

    @property
    def install_command(self) -> str:
        return "apt-get install -y --no-install-recommends " + " ".join(self.packages)


HAPROXY = Tool("haproxy", ("haproxy",), ("/usr/sbin/haproxy",))
APACHE = Tool(
    "apache2",
    ("apache2", "libapache2-mod-auth-openidc"),
    ("/usr/sbin/apache2",),
    also=(str(APACHE_MODULES / "mod_auth_openidc.so"),),
)
REDIS = Tool("redis-server", ("redis-server",), ("/usr/bin/redis-server",))
WRK = Tool("wrk", ("wrk",), ("/usr/bin/wrk",))
NGINX = Tool("nginx", ("nginx",), ("/usr/sbin/nginx",))


def locate(tool: Tool) -> str | None:
    path = shutil.which(tool.binary) or next((p for p in tool.candidates if os.access(p, os.X_OK)), None)
    if path is None or not all(Path(f).exists() for f in tool.also):
        return None
    return path


def find_or_install(tool: Tool, *, install: bool) -> tuple[str | None, str]:
    """(path, note): the binary, installing its packages first when allowed and root.

    The note says what happened (installed, or the exact command to run when it could not), so a
    skipped row tells the reader how to get it.
    """
    path = locate(tool)
    if path is not None:
        return path, ""
    if not install or os.geteuid() != 0:
        return None, f"skipped: {tool.binary} missing; install with `{tool.install_command}`"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "--no-install-recommends", *tool.packages]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:  # a machine that never ran `apt-get update` knows no packages yet
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, stdin=subprocess.DEVNULL)
        result = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    path = locate(tool)
    if path is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"skipped: `{tool.install_command}` failed: {tail[0]}"
    return path, f"installed {' '.join(tool.packages)}"


def version(binary: str, flag: str = "-v") -> str:
    result = subprocess.run([binary, flag], capture_output=True, text=True, check=False)
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def _quoted(text: str) -> str:
    """A double-quoted config string: both HAProxy and Apache read \\" and \\\\ inside quotes."""
    if any(c in text for c in "\r\n\0"):
        raise ValueError(f"newline or NUL in a config value: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def haproxy_conf(
    prefix: Path, port: int, upstream_port: int, *, key_file: Path, issuer: str, audience: str
) -> str:
    """One thread; every request needs a Bearer RS256 token that `jwt_verify` accepts against
    `key_file` (a PEM public key: HAProxy 2.6 takes no certificate there), with the run's `iss` and
    `aud` and an `exp` in the future; 401 otherwise. HAProxy keeps no cache of verified tokens: one
    RSA check per request."""
    key = _quoted(str(key_file))
    verify = f"var(txn.bearer),jwt_verify(txn.alg,{key}) -m int 1"
    return (
        "global\n"
        "  nbthread 1\n"
        "  maxconn 8192\n"
        f"  pidfile {prefix}/haproxy.pid\n"
        "defaults\n"
        "  mode http\n"
        "  option http-keep-alive\n"
        "  timeout connect 5s\n"
        "  timeout client 75s\n"
        "  timeout server 30s\n"
        "  timeout http-keep-alive 75s\n"
        "frontend bench\n"
        f"  bind 127.0.0.1:{port}\n"
        '  http-request deny deny_status 401 unless { req.hdr(authorization) -m beg -i "bearer " }\n'
        "  http-request set-var(txn.bearer) http_auth_bearer\n"
        "  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')\n"
        '  http-request deny deny_status 401 unless { var(txn.alg) -m str "RS256" }\n'
        f"  http-request deny deny_status 401 unless {{ {verify} }}\n"
        "  http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')\n"
        f"  http-request deny deny_status 401 unless {{ var(txn.iss) -m str {_quoted(issuer)} }}\n"
        "  http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')\n"
        f"  http-request deny deny_status 401 unless {{ var(txn.aud) -m str {_quoted(audience)} }}\n"
        "  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')\n"
        "  http-request set-var(txn.now) date()\n"
        "  http-request deny deny_status 401 unless { var(txn.exp),sub(txn.now) -m int gt 0 }\n"
        "  default_backend app\n"
        "backend app\n"
        "  http-reuse always\n"
        f"  server app 127.0.0.1:{upstream_port} maxconn 512\n"
    )


def haproxy_argv(binary: str, prefix: Path, conf_text: str) -> list[str]:
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "haproxy.cfg"
    conf.write_text(conf_text)
    return [binary, "-db", "-f", str(conf)]  # -db: foreground, no daemon


def apache_user() -> str | None:
    """The user Apache's children switch to when started as root (it refuses to serve as root)."""
    if os.geteuid() != 0:
        return None
    for name in ("www-data", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


def apache_conf(
    prefix: Path,
    port: int,
    upstream_port: int,
    *,
    cert_file: Path,
    kid: str,
    issuer: str,
    audience: str,
    user: str | None,
    modules: Path = APACHE_MODULES,
) -> str:
    """mpm_event, one process x 64 threads, mod_auth_openidc as an OAuth 2.0 resource server
    (`AuthType oauth20`): the JWT verified locally against `cert_file` (an X.509 certificate of the
    provider's key, under its `kid`), `iss` and `aud` required by `Require claim`, `exp` checked by
    the module; 401 otherwise. Then mod_proxy_http to the upstream, connections reused."""
    loads = [
        ("mpm_event_module", "mod_mpm_event.so"),
        ("authn_core_module", "mod_authn_core.so"),
        ("authz_core_module", "mod_authz_core.so"),
        ("authz_user_module", "mod_authz_user.so"),
        ("proxy_module", "mod_proxy.so"),
        ("proxy_http_module", "mod_proxy_http.so"),
        ("auth_openidc_module", "mod_auth_openidc.so"),
    ]
    lines = [f"LoadModule {name} {modules / so}" for name, so in loads]
    if user is not None:
        lines += [f"User {user}", f"Group {user}"]
    lines += [
        f"ServerRoot {prefix}",
        f"DefaultRuntimeDir {prefix}/run",
        f"PidFile {prefix}/httpd.pid",
        f"ErrorLog {prefix}/error.log",
        "LogLevel warn",
        "ServerName 127.0.0.1",
        f"Listen 127.0.0.1:{port}",
        "StartServers 1",
        "ServerLimit 1",
        f"ThreadLimit {APACHE_THREADS}",
        f"ThreadsPerChild {APACHE_THREADS}",
        f"MaxRequestWorkers {APACHE_THREADS}",
        "MinSpareThreads 1",
        f"MaxSpareThreads {APACHE_THREADS}",
        # Idle keep-alive connections wait in the event loop, not in a thread: room for 1,000+.
        "AsyncRequestWorkerFactor 20",
        "MaxConnectionsPerChild 0",
        "KeepAlive On",
        "MaxKeepAliveRequests 0",
        "KeepAliveTimeout 75",
        "OIDCCryptoPassphrase bench-only-passphrase",
        f"OIDCOAuthVerifyCertFiles {kid}#{cert_file}",
        "OIDCOAuthRemoteUserClaim sub",
        "<Location />",
        "  AuthType oauth20",
        "  <RequireAll>",
        "    Require valid-user",
        f"    Require claim iss:{issuer}",
        f"    Require claim aud:{audience}",
        "  </RequireAll>",
        f"  ProxyPass http://127.0.0.1:{upstream_port}/ keepalive=On",
        "</Location>",
    ]
    for value in (kid, issuer, audience, str(cert_file)):
        if any(c.isspace() or c in '"\\<>' for c in value):
            raise ValueError(f"unsafe value for an Apache directive: {value!r}")
    return "\n".join(lines) + "\n"


def apache_argv(binary: str, prefix: Path, conf_text: str) -> list[str]:
    (prefix / "run").mkdir(parents=True, exist_ok=True)
    conf = prefix / "httpd.conf"
    conf.write_text(conf_text)
    return [binary, "-d", str(prefix), "-f", str(conf), "-DFOREGROUND"]


@dataclass(frozen=True)
class TokenChecks:
    """What a gateway verifies: the provider's key (both encodings) and the run's claims."""

    public_key_file: Path  # PEM SubjectPublicKeyInfo, for HAProxy
    cert_file: Path  # X.509 of the same key, for mod_auth_openidc
    kid: str
    issuer: str
    audience: str


def write_token_checks(tmp: Path, private_key: object, kid: str, issuer: str, audience: str) -> TokenChecks:
    """The provider's public key as PEM and as a certificate under `tmp`/keys (written once)."""
    from cryptography.hazmat.primitives import serialization

    directory = tmp / "keys"
    public, cert = directory / "provider-public.pem", directory / "provider-cert.pem"
    if not cert.exists():
        directory.mkdir(exist_ok=True)
        pem = private_key.public_key().public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        public.write_bytes(pem)
        cert.write_bytes(self_signed_cert_pem(private_key))
        readable_by_all(tmp, directory, public, cert)  # Apache's children run as www-data
    return TokenChecks(public, cert, kid, issuer, audience)


def launch(
    tool: Tool, binary: str, children: Children, tmp: Path, upstream_port: int, checks: TokenChecks
) -> tuple[subprocess.Popen[bytes], int]:
    """Start HAProxy or Apache in its own prefix under `tmp`; (process, port) once it listens."""
    port = free_port()
    prefix = tmp / f"{tool.binary}-{port}"
    prefix.mkdir(parents=True)
    if tool is HAPROXY:
        conf = haproxy_conf(
            prefix, port, upstream_port, key_file=checks.public_key_file, issuer=checks.issuer,
            audience=checks.audience,
        )  # fmt: skip
        argv, log = haproxy_argv(binary, prefix, conf), prefix / "haproxy.log"
        proc = children.spawn(argv, log=log)
    elif tool is APACHE:
        readable_by_all(prefix)  # its children run as www-data when started as root
        conf = apache_conf(
            prefix, port, upstream_port, cert_file=checks.cert_file, kid=checks.kid,
            issuer=checks.issuer, audience=checks.audience, user=apache_user(),
        )  # fmt: skip
        argv, log = apache_argv(binary, prefix, conf), prefix / "error.log"
        proc = children.spawn(argv, log=prefix / "stdout.log")
    else:
        raise ValueError(f"not a gateway: {tool.binary}")
    wait_tcp(port, proc, what=tool.binary, log=log)
    return proc, port


def readable_by_all(*paths: Path) -> None:
    """Apache's children run as www-data: let them traverse the temp prefix (nothing secret in it)."""
    for path in paths:
        path.chmod(0o755 if path.is_dir() else 0o644)


def self_signed_cert_pem(private_key: object, common_name: str = "bench-issuer") -> bytes:
    """An X.509 certificate of the provider's key: mod_auth_openidc takes keys only as certificates."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(private_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def forged(token: str) -> str:
    """The same header and claims under a signature of another RSA key: only a real check refuses it."""
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    head, payload, _ = token.split(".")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signature = other.sign(f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{payload}." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()

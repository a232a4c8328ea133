"""Config rendering and installation for the HAProxy and Apache baselines (bench/baselines.py).

The rendered files are also checked by the binaries themselves where installed (`haproxy -c`,
`apache2 -t`); test_baselines_smoke.py runs them for real.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import baselines
import pytest
from baselines import APACHE, HAPROXY, Tool, apache_conf, find_or_install, haproxy_conf
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "http://127.0.0.1:40000/realms/test"


def render_haproxy(tmp_path: Path, issuer: str = ISSUER) -> str:
    return haproxy_conf(tmp_path, 8001, 8002, key_file=tmp_path / "pub.pem", issuer=issuer, audience="api")


def render_apache(tmp_path: Path, user: str | None = "www-data", **overrides: str) -> str:
    values = {"kid": "k1", "issuer": ISSUER, "audience": "api"} | overrides
    return apache_conf(tmp_path, 8001, 8002, cert_file=tmp_path / "cert.pem", user=user, **values)


def test_haproxy_checks_signature_issuer_audience_and_expiry_on_every_request(tmp_path: Path) -> None:
    conf = render_haproxy(tmp_path)
    assert "  nbthread 1\n" in conf
    assert "bind 127.0.0.1:8001" in conf
    assert "server app 127.0.0.1:8002" in conf
    assert f'jwt_verify(txn.alg,"{tmp_path}/pub.pem") -m int 1' in conf
    assert '{ var(txn.alg) -m str "RS256" }' in conf  # alg pinned: no `none`, no HS256 with the key
    assert f'var(txn.iss) -m str "{ISSUER}"' in conf
    assert 'var(txn.aud) -m str "api"' in conf
    assert "var(txn.exp),sub(txn.now) -m int gt 0" in conf
    # Every check refuses with 401, before any request reaches the backend.
    rules = [line for line in conf.splitlines() if "http-request deny" in line]
    assert len(rules) == 6
    assert all("deny_status 401 unless" in line for line in rules)
    assert conf.index("default_backend") > conf.rindex("http-request deny")


@pytest.mark.parametrize("bad", ['a"b', "a\\b"])
def test_haproxy_strings_are_quoted_so_a_value_cannot_end_its_rule(tmp_path: Path, bad: str) -> None:
    conf = render_haproxy(tmp_path, issuer=bad)
    escaped = bad.replace("\\", "\\\\").replace('"', '\\"')
    assert f'-m str "{escaped}" }}' in conf


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\0b"])
def test_haproxy_refuses_values_with_line_breaks(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="newline or NUL"):
        render_haproxy(tmp_path, issuer=bad)


def test_apache_is_one_process_of_64_threads_verifying_the_jwt_locally(tmp_path: Path) -> None:
    conf = render_apache(tmp_path)
    lines = conf.splitlines()
    for directive in ("ServerLimit 1", "StartServers 1", "ThreadsPerChild 64", "MaxRequestWorkers 64"):
        assert directive in lines
    assert any(line.startswith("LoadModule mpm_event_module ") for line in lines)
    assert not any("mpm_prefork" in line or "mpm_worker" in line for line in lines)
    assert f"OIDCOAuthVerifyCertFiles k1#{tmp_path}/cert.pem" in lines
    assert "  AuthType oauth20" in lines
    assert f"    Require claim iss:{ISSUER}" in lines
    assert "    Require claim aud:api" in lines
    assert "  ProxyPass http://127.0.0.1:8002/ keepalive=On" in lines
    assert "Listen 127.0.0.1:8001" in lines
    # Everything it writes stays in its prefix.
    for key in ("ServerRoot", "DefaultRuntimeDir", "PidFile", "ErrorLog"):
        (value,) = [line.split(" ", 1)[1] for line in lines if line.startswith(key + " ")]
        assert value.startswith(str(tmp_path))


def test_apache_runs_its_children_as_the_given_user_only_when_asked(tmp_path: Path) -> None:
    assert "User www-data" in render_apache(tmp_path).splitlines()
    assert not any(line.startswith("User ") for line in render_apache(tmp_path, user=None).splitlines())


@pytest.mark.parametrize(
    "overrides",
    [
        {"issuer": "http://x/ y"},
        {"audience": "api\nRequire all granted"},
        {"kid": 'k"1'},
        {"audience": "<x>"},
    ],
)
def test_apache_refuses_values_that_would_change_the_config(
    tmp_path: Path, overrides: dict[str, str]
) -> None:
    with pytest.raises(ValueError, match="unsafe value"):
        render_apache(tmp_path, **overrides)


def test_a_missing_tool_is_skipped_with_the_exact_install_command_when_installing_is_off() -> None:
    tool = Tool("no-such-binary-here", ("pkg-a", "pkg-b"))
    path, note = find_or_install(tool, install=False)
    assert path is None
    assert note == (
        "skipped: no-such-binary-here missing; install with "
        "`apt-get install -y --no-install-recommends pkg-a pkg-b`"
    )


def test_apache_counts_as_missing_without_mod_auth_openidc(tmp_path: Path) -> None:
    tool = Tool("sh", APACHE.packages, also=(str(tmp_path / "mod_auth_openidc.so"),))
    assert baselines.locate(tool) is None
    (tmp_path / "mod_auth_openidc.so").touch()
    assert baselines.locate(tool) is not None


def test_the_packages_are_the_debian_ones() -> None:
    assert HAPROXY.packages == ("haproxy",)
    assert APACHE.packages == ("apache2", "libapache2-mod-auth-openidc")


def test_the_installed_binaries_accept_the_rendered_configs(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    checks = baselines.write_token_checks(tmp_path, key, "k1", ISSUER, "api")
    checked = []
    haproxy = baselines.locate(HAPROXY)
    if haproxy is not None:
        conf = haproxy_conf(
            tmp_path, 8001, 8002, key_file=checks.public_key_file, issuer=ISSUER, audience="api"
        )
        argv = baselines.haproxy_argv(haproxy, tmp_path / "h", conf)
        result = subprocess.run([haproxy, "-c", *argv[2:]], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        checked.append("haproxy")
    apache = baselines.locate(APACHE)
    if apache is not None:
        prefix = tmp_path / "a"
        prefix.mkdir()
        conf = apache_conf(
            prefix, 8001, 8002, cert_file=checks.cert_file, kid="k1", issuer=ISSUER, audience="api",
            user=baselines.apache_user(),
        )  # fmt: skip
        argv = baselines.apache_argv(apache, prefix, conf)
        result = subprocess.run([*argv[:-1], "-t"], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        checked.append("apache2")
    if not checked:
        pytest.skip("neither haproxy nor apache2 with mod_auth_openidc is installed")

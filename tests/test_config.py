"""Settings: precedence, parsing, validation that reports everything at once, and the CLI around it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from authcar.config import ConfigError, Problem, Settings, load_settings, setting
from tests.idp import run_idp
from tests.support.process import ALLOW_ALL_POLICY
from tests.support.sidecar import start_sidecar
from tests.support.upstream_app import RunningUpstream


def load(flags: dict[str, object] | None = None, env: dict[str, str] | None = None) -> Settings:
    return load_settings(flags or {}, environ=env or {}).settings


def messages(found: Iterable[Problem]) -> tuple[str, ...]:
    return tuple(problem.message for problem in found)


def problems_of(flags: dict[str, object] | None = None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(flags or {}, environ=env or {})
    return caught.value.messages


def test_defaults_match_the_contract() -> None:
    s = load()
    assert (s.host, s.port, s.admin_host, s.admin_port) == ("0.0.0.0", 4180, "0.0.0.0", 9901)
    assert s.upstream == "http://127.0.0.1:8080"
    assert s.workers == 1
    assert s.log_format == "json"
    assert s.log_level == "info"
    assert s.allow_anonymous is False  # deny is the default


def test_flag_beats_env_beats_yaml_beats_default(tmp_path: Path) -> None:
    config = tmp_path / "authcar.yaml"
    config.write_text("port: 1111\nadmin_port: 2222\nworkers: 3\n")
    env = {"AUTHCAR_CONFIG": str(config), "AUTHCAR_PORT": "3333", "AUTHCAR_ADMIN_PORT": "4444"}
    loaded = load_settings({"port": "5555"}, environ=env)
    s = loaded.settings
    assert s.port == 5555  # flag
    assert s.admin_port == 4444  # env over YAML
    assert s.workers == 3  # YAML over default
    assert s.log_level == "info"  # default
    assert loaded.sources["port"] == "flag"
    assert loaded.sources["admin_port"] == "env"
    assert loaded.sources["workers"] == "yaml"
    assert loaded.sources["log_level"] == "default"


def test_values_are_parsed_to_their_types() -> None:
    s = load(
        env={
            "AUTHCAR_ALLOW_ANONYMOUS": "Yes",
            "AUTHCAR_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1 ,",
            "AUTHCAR_UPSTREAM_READ_TIMEOUT": "2.5",
            "AUTHCAR_LOG_FORMAT": "TEXT",
        }
    )
    assert s.allow_anonymous is True
    assert s.trusted_proxies == ("10.0.0.0/8", "192.168.1.1")
    assert s.upstream_read_timeout == 2.5
    assert s.log_format == "text"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    problems = problems_of(
        flags={"max_body_bytes": "lots"},
        env={
            "AUTHCAR_PORT": "99999",
            "AUTHCAR_WORKERS": "0",
            "AUTHCAR_UPSTREAM": "ftp://app",
            "AUTHCAR_TLS_CERT_FILE": str(tmp_path / "missing.crt"),
            "AUTHCAR_LOG_LEVEL": "loud",
            "AUTHCAR_ALLOW_ANONYMOUS": "maybe",
            "AUTHCAR_TRUSTED_PROXIES": "10.0.0.0/8,not-a-network",
        },
    )
    text = "\n".join(problems)
    for expected in (
        "--max-body-bytes: 'lots' is not a whole number",
        "AUTHCAR_PORT: 99999 is not a TCP port",
        "AUTHCAR_WORKERS: must be at least 1",
        "AUTHCAR_UPSTREAM: 'ftp://app'",
        "must be set together",
        "missing.crt does not exist",
        "AUTHCAR_LOG_LEVEL: 'loud' is not one of",
        "AUTHCAR_ALLOW_ANONYMOUS: 'maybe' is not a boolean",
        "'not-a-network' is not an IP address",
    ):
        assert expected in text, f"missing problem {expected!r} in:\n{text}"


def test_upstream_must_be_a_plain_origin() -> None:
    assert any("credentials" in p for p in problems_of(env={"AUTHCAR_UPSTREAM": "http://u:p@127.0.0.1:1"}))
    assert any("invalid port" in p for p in problems_of(env={"AUTHCAR_UPSTREAM": "http://127.0.0.1:99999"}))
    assert load(env={"AUTHCAR_UPSTREAM": "http://[::1]:8080/api"}).upstream == "http://[::1]:8080/api"


def test_contradictions_are_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    problems = problems_of(env={"AUTHCAR_TLS_CLIENT_CA_FILE": str(ca), "AUTHCAR_ADMIN_PORT": "4180"})
    assert any("needs TLS" in p for p in problems)
    assert any("are both 4180" in p for p in problems)


def test_unknown_yaml_keys_and_broken_yaml_are_problems(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("port: 1\nupstrem: http://typo\n")
    assert any("unknown setting 'upstrem'" in p for p in problems_of(env={"AUTHCAR_CONFIG": str(config)}))
    config.write_text("port: [unclosed\n")
    assert any("not valid YAML" in p for p in problems_of(env={"AUTHCAR_CONFIG": str(config)}))
    assert any("cannot read" in p for p in problems_of(env={"AUTHCAR_CONFIG": str(tmp_path / "none.yaml")}))


def test_yaml_lists_and_dashes(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("trusted-proxies:\n  - 10.1.0.0/16\n  - 10.2.0.0/16\nallow_anonymous: true\n")
    s = load(env={"AUTHCAR_CONFIG": str(config)})
    assert s.trusted_proxies == ("10.1.0.0/16", "10.2.0.0/16")
    assert s.allow_anonymous is True


def test_kubernetes_service_links_do_not_break_the_port() -> None:
    # A Service named "authcar" makes Kubernetes inject AUTHCAR_PORT=tcp://<ip>:<port> into every pod.
    loaded = load_settings(
        {},
        environ={
            "AUTHCAR_PORT": "tcp://10.96.0.12:4180",
            "AUTHCAR_PORT_4180_TCP": "tcp://10.96.0.12:4180",
            "AUTHCAR_SERVICE_HOST": "10.96.0.12",
            "AUTHCAR_SERVICE_PORT": "4180",
        },
    )
    assert loaded.settings.port == 4180
    assert any("enableServiceLinks" in w for w in messages(loaded.warnings))
    assert not any("SERVICE_HOST" in w for w in messages(loaded.warnings))


def test_unknown_environment_variables_are_warned_about() -> None:
    loaded = load_settings({}, environ={"AUTHCAR_UPSTREAMM": "http://x"})
    # First; then the one that no issuer is configured.
    assert messages(loaded.warnings)[0] == (
        "ignoring unknown environment variable AUTHCAR_UPSTREAMM (did you mean AUTHCAR_UPSTREAM?)"
    )


@dataclass(frozen=True)
class SecretSettings(Settings):
    client_secret: str | None = setting(None, "a secret", secret=True)


def test_secrets_have_a_file_variant(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n")  # Kubernetes Secret files often end with a newline
    loaded = load_settings({}, environ={"AUTHCAR_CLIENT_SECRET_FILE": str(secret)}, schema=SecretSettings)
    assert loaded.settings.client_secret == "s3cr3t"  # type: ignore[attr-defined]

    with pytest.raises(ConfigError) as both:
        load_settings(
            {},
            environ={"AUTHCAR_CLIENT_SECRET_FILE": str(secret), "AUTHCAR_CLIENT_SECRET": "x"},
            schema=SecretSettings,
        )
    assert "both set" in both.value.messages[0]

    with pytest.raises(ConfigError) as missing:
        load_settings(
            {}, environ={"AUTHCAR_CLIENT_SECRET_FILE": str(tmp_path / "nope")}, schema=SecretSettings
        )
    assert "cannot read" in missing.value.messages[0]


def authcar(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "authcar", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )


def test_check_config_prints_every_problem_and_exits_1() -> None:
    result = authcar(
        "check-config", "--port", "70000", env={"AUTHCAR_UPSTREAM": "nope", "AUTHCAR_WORKERS": "-1"}
    )
    assert result.returncode == 1
    assert "3 problem(s)" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_check_config_accepts_a_valid_configuration() -> None:
    result = authcar("check-config", env={"AUTHCAR_UPSTREAM": "http://127.0.0.1:9000"})
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_run_with_bad_settings_exits_1_without_a_traceback(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    key.write_text("not a key")
    result = authcar("run", env={"AUTHCAR_TLS_CERT_FILE": str(cert), "AUTHCAR_TLS_KEY_FILE": str(key)})
    assert result.returncode == 1
    assert "TLS:" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_run_reports_a_busy_port_cleanly() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = authcar(
            "run", env={"AUTHCAR_HOST": "127.0.0.1", "AUTHCAR_PORT": str(port), "AUTHCAR_ADMIN_PORT": "0"}
        )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_help_lists_every_setting_with_its_environment_variable() -> None:
    result = authcar("run", "--help")
    assert result.returncode == 0
    for name in (
        "AUTHCAR_UPSTREAM",
        "AUTHCAR_TLS_CERT_FILE",
        "AUTHCAR_MAX_BODY_BYTES",
        "AUTHCAR_SHUTDOWN_DELAY",
    ):
        assert name in result.stdout


# --- issuers and authentication settings ----------------------------------------------------


def test_several_issuers_from_yaml_inherit_only_the_shared_rules(tmp_path: Path) -> None:
    secret = tmp_path / "partner-secret"
    secret.write_text("s3cret\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        "issuers:\n"
        "  - issuer_url: https://partners.example/realm\n"
        "    audience: [partner-api]\n"
        "    leeway: 5\n"
        "    subject-claim: email\n"
        "    client_id: authcar\n"
        f"    client_secret_file: {secret}\n"
    )
    s = load(
        env={
            "AUTHCAR_CONFIG": str(config),
            "AUTHCAR_OIDC_ISSUER_URL": "https://login.example/realm",
            "AUTHCAR_OIDC_AUDIENCE": "api",
            "AUTHCAR_OIDC_ALGORITHMS": "ES256",
            "AUTHCAR_ROLES_CLAIM": "groups",
        }
    )
    own, partner = s.all_issuers()
    assert (own.issuer_url, own.audience, own.algorithms, own.leeway) == (
        "https://login.example/realm",
        ("api",),
        ("ES256",),
        30.0,
    )
    assert partner.issuer_url == "https://partners.example/realm"
    assert partner.audience == ("partner-api",)  # never inherited: audiences belong to one issuer
    assert (partner.leeway, partner.subject_claim) == (5.0, "email")  # its own
    assert (partner.algorithms, partner.roles_claim) == (("ES256",), ("groups",))  # inherited
    assert partner.client_secret == "s3cret"
    assert "s3cret" not in repr(partner)


def test_issuers_can_come_from_the_environment_as_json() -> None:
    s = load(env={"AUTHCAR_ISSUERS": '[{"issuer_url": "https://a.example", "audience": ["x"]}]'})
    assert [i.issuer_url for i in s.all_issuers()] == ["https://a.example"]


def test_issuer_problems_are_all_reported_with_their_place(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "issuers:\n"
        "  - issuer_url: https://login.example/realm\n"  # the same as the env issuer
        "    algorithms: [HS256]\n"
        "    required_claims: [iat]\n"
        "    client_id: only-the-id\n"
        "  - issuer_url: ftp://nope\n"
        "    introspection_url: https://nope/introspect\n"
    )
    problems = problems_of(
        env={"AUTHCAR_CONFIG": str(config), "AUTHCAR_OIDC_ISSUER_URL": "https://login.example/realm"}
    )
    expected = [
        "issuers[0].algorithms: HS256 not accepted",
        "issuers[0].required_claims: must include exp",
        "issuers[0].client_id and issuers[0].client_secret must be set together",
        "issuers[0].issuer_url: issuer 'https://login.example/realm' is configured twice",
        "issuers[1].issuer_url: 'ftp://nope' is not an issuer URL",
        "issuers[1].introspection_url needs issuers[1].client_id",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in problems), (text, problems)
    config.write_text("issuers:\n  - audience: [x]\n    colour: blue\n")
    problems = problems_of(env={"AUTHCAR_CONFIG": str(config)})
    assert any("issuers[0]: unknown issuer setting 'colour'" in p for p in problems)
    assert any("issuers[0]: issuer_url is required" in p for p in problems)


def test_authentication_settings_are_checked(tmp_path: Path) -> None:
    problems = problems_of(
        env={
            "AUTHCAR_PUBLIC_PATHS": "GET /healthz,/docs/../admin,BREW /pot",
            "AUTHCAR_TOKEN_COOKIE": "access token",
            "AUTHCAR_TLS_CLIENT_CERT_IDENTITY": "true",
            "AUTHCAR_TLS_FORWARD_CLIENT_CERT": "true",
            "AUTHCAR_OIDC_JWKS_URL": "https://login.example/jwks",
            "AUTHCAR_INTROSPECTION_MAX_CONCURRENCY": "0",
        }
    )
    assert sum("AUTHCAR_PUBLIC_PATHS" in p for p in problems) == 2
    assert any("AUTHCAR_TOKEN_COOKIE" in p for p in problems)
    assert any("AUTHCAR_TLS_CLIENT_CERT_IDENTITY needs client certificates" in p for p in problems)
    assert any("AUTHCAR_TLS_FORWARD_CLIENT_CERT needs client certificates" in p for p in problems)
    assert any("AUTHCAR_OIDC_ISSUER_URL is needed" in p for p in problems)
    assert any("AUTHCAR_INTROSPECTION_MAX_CONCURRENCY: must be greater than 0" in p for p in problems)
    s = load(env={"AUTHCAR_PUBLIC_PATHS": "GET|HEAD /healthz, /docs/*", "AUTHCAR_TOKEN_COOKIE": "access"})
    assert s.public_paths == ("GET|HEAD /healthz", "/docs/*")


# --- an issuer needs an audience ----------------------------------------------------------------

ISSUER = "https://login.example/realm"


def yaml_issuers(tmp_path: Path, *entries: str) -> str:
    config = tmp_path / "issuers.yaml"
    config.write_text("issuers:\n" + "".join(f"  - issuer_url: {entry}\n" for entry in entries))
    return str(config)


@pytest.mark.parametrize("audience", [None, "", " , "], ids=["unset", "empty", "blank-list"])
def test_the_environment_issuer_needs_an_audience(audience: str | None) -> None:
    env = {"AUTHCAR_OIDC_ISSUER_URL": ISSUER}
    if audience is not None:
        env["AUTHCAR_OIDC_AUDIENCE"] = audience
    problems = problems_of(env=env)
    assert problems == [
        "AUTHCAR_OIDC_AUDIENCE: required, the `aud` this service's tokens carry"
        " (or AUTHCAR_OIDC_ALLOW_ANY_AUDIENCE=true to accept tokens minted for any client)"
    ]


def test_every_yaml_issuer_needs_its_own_audience(tmp_path: Path) -> None:
    config = yaml_issuers(
        tmp_path,
        "https://a.example\n    audience: [a-api]",
        "https://b.example",
        "https://c.example\n    audience: []",
    )
    # The top-level switch belongs to the AUTHCAR_OIDC_* issuer: it opens no YAML issuer.
    env = {
        "AUTHCAR_CONFIG": config,
        "AUTHCAR_OIDC_ISSUER_URL": ISSUER,
        "AUTHCAR_OIDC_ALLOW_ANY_AUDIENCE": "true",
    }
    problems = problems_of(env=env)
    assert [p.split(":", 1)[0] for p in problems] == ["issuers[1].audience", "issuers[2].audience"]
    assert "issuers[1].allow_any_audience=true" in problems[0]
    json_issuers = '[{"issuer_url": "https://a.example"}]'
    assert [p.split(":", 1)[0] for p in problems_of(env={"AUTHCAR_ISSUERS": json_issuers})] == [
        "issuers[0].audience"
    ]


def test_allowing_any_audience_is_a_warning_not_a_problem(tmp_path: Path) -> None:
    config = yaml_issuers(tmp_path, "https://b.example\n    allow_any_audience: true")
    loaded = load_settings(
        {},
        environ={
            "AUTHCAR_CONFIG": config,
            "AUTHCAR_OIDC_ISSUER_URL": ISSUER,
            "AUTHCAR_OIDC_ALLOW_ANY_AUDIENCE": "true",
        },
    )
    own, partner = loaded.settings.all_issuers()
    assert (own.audience, own.allow_any_audience) == ((), True)
    assert (partner.audience, partner.allow_any_audience) == ((), True)
    assert messages(loaded.warnings) == (
        f"AUTHCAR_OIDC_ALLOW_ANY_AUDIENCE: issuer {ISSUER!r} accepts tokens minted for any client of its"
        " provider, as `aud` is not checked; set AUTHCAR_OIDC_AUDIENCE",
        "issuers[0].allow_any_audience: issuer 'https://b.example' accepts tokens minted for any client"
        " of its provider, as `aud` is not checked; set issuers[0].audience",
    )


def test_allowing_any_audience_where_it_changes_nothing_is_pointed_out(tmp_path: Path) -> None:
    with_audience = load_settings(
        {},
        environ={
            "AUTHCAR_OIDC_ISSUER_URL": ISSUER,
            "AUTHCAR_OIDC_AUDIENCE": "api",
            "AUTHCAR_OIDC_ALLOW_ANY_AUDIENCE": "true",
        },
    )
    assert with_audience.settings.all_issuers()[0].audience == ("api",)  # still checked
    assert messages(with_audience.warnings) == (
        "AUTHCAR_OIDC_ALLOW_ANY_AUDIENCE has no effect: AUTHCAR_OIDC_AUDIENCE is set",
    )
    config = yaml_issuers(tmp_path, "https://b.example\n    audience: [b-api]")
    without_env_issuer = load_settings(
        {}, environ={"AUTHCAR_CONFIG": config, "AUTHCAR_OIDC_ALLOW_ANY_AUDIENCE": "true"}
    )
    assert messages(without_env_issuer.warnings) == (
        "AUTHCAR_OIDC_ALLOW_ANY_AUDIENCE has no effect without AUTHCAR_OIDC_ISSUER_URL"
        " (YAML issuers set allow_any_audience each)",
    )


def audience_env(**extra: str) -> dict[str, str]:
    return {"AUTHCAR_POLICY_DIR": str(ALLOW_ALL_POLICY), "AUTHCAR_OIDC_ISSUER_URL": ISSUER, **extra}


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_the_cli_refuses_an_issuer_without_an_audience(tmp_path: Path, command: str) -> None:
    from_env = authcar(command, env=audience_env())
    assert from_env.returncode == 1
    assert "1 problem(s)" in from_env.stderr
    assert "- AUTHCAR_OIDC_AUDIENCE: required" in from_env.stderr
    config = yaml_issuers(tmp_path, "https://b.example", "https://c.example")
    from_yaml = authcar(command, env=audience_env(AUTHCAR_OIDC_AUDIENCE="api", AUTHCAR_CONFIG=config))
    assert from_yaml.returncode == 1
    assert "2 problem(s)" in from_yaml.stderr
    assert "- issuers[0].audience: required" in from_yaml.stderr
    assert "- issuers[1].audience: required" in from_yaml.stderr
    for result in (from_env, from_yaml):
        assert "Traceback" not in result.stderr + result.stdout
        assert "listening" not in result.stderr


def test_check_config_prints_the_any_audience_warning_and_passes(tmp_path: Path) -> None:
    config = yaml_issuers(tmp_path, "https://b.example\n    allow_any_audience: true")
    result = authcar(
        "check-config", env=audience_env(AUTHCAR_OIDC_ALLOW_ANY_AUDIENCE="true", AUTHCAR_CONFIG=config)
    )
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout
    warnings = [line for line in result.stderr.splitlines() if line.startswith("authcar: warning:")]
    assert len(warnings) == 2
    assert "AUTHCAR_OIDC_ALLOW_ANY_AUDIENCE: issuer" in warnings[0]
    assert "issuers[0].allow_any_audience: issuer 'https://b.example'" in warnings[1]


def test_settings_built_in_code_cannot_skip_the_audience_check() -> None:
    from authcar.authn.issuers import Issuer

    settings = Settings(oidc_issuer_url=ISSUER)  # no load_settings, so no validation
    with pytest.raises(ValueError, match="has no audience"):
        Issuer(settings.all_issuers()[0], settings, httpx.AsyncClient())


async def test_an_audience_refuses_tokens_minted_for_other_clients(upstream: RunningUpstream) -> None:
    async with run_idp() as idp:
        for options, other_client_status in (
            ({"oidc_audience": ("api",)}, 401),
            ({"oidc_allow_any_audience": True}, 200),  # what the escape hatch gives away
        ):
            async with (
                start_sidecar(
                    upstream.url, allow_anonymous=False, oidc_issuer_url=idp.issuer, **options
                ) as sidecar,
                httpx.AsyncClient(base_url=sidecar.url, timeout=10) as client,
            ):
                ours = await client.get("/ours", headers={"Authorization": f"Bearer {idp.mint()}"})
                theirs = idp.mint(aud="billing")  # same provider, same keys, another service
                other = await client.get("/other", headers={"Authorization": f"Bearer {theirs}"})
            assert ours.status_code == 200
            assert other.status_code == other_client_status
            if other_client_status == 401:
                assert other.json()["error"] == "wrong_audience"
    assert [s.raw_path for s in upstream.seen] == ["/ours", "/ours", "/other"]

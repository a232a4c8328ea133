"""The forward-auth examples in deploy/forward-auth/, checked offline: every YAML file parses; the
Ingress validates against the Kubernetes schemas; the Traefik Middleware and the Envoy filter say
what authcar needs (its endpoint, the identity headers copied back, nothing a client could forge);
the nginx snippet passes `nginx -t` inside a server block."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support.nginx import check_conf, main_conf, nginx_binary
from tests.test_deploy import kubernetes_validate

EXAMPLES = Path(__file__).resolve().parent.parent / "deploy" / "forward-auth"
ENDPOINT = "/oauth2/auth"
IDENTITY_HEADERS = {"X-Auth-Request-User", "X-Auth-Request-Groups", "X-Auth-Request-Jwt"}


def load(name: str) -> Any:
    return yaml.safe_load((EXAMPLES / name).read_text())


def test_every_yaml_example_parses() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert names == ["envoy.yaml", "ingress-nginx.yaml", "traefik.yaml"]
    for name in names:
        assert isinstance(load(name), dict), name


def test_the_ingress_validates_and_names_authcars_endpoint_and_headers() -> None:
    ingress = load("ingress-nginx.yaml")
    kv = kubernetes_validate()
    kv.validate(ingress, kv.utils.latest_version(), strict=True)
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-url"].endswith(":4180" + ENDPOINT)
    assert "/oauth2/start?rd=" in annotations["nginx.ingress.kubernetes.io/auth-signin"]
    copied = set(annotations["nginx.ingress.kubernetes.io/auth-response-headers"].split(","))
    assert copied >= IDENTITY_HEADERS


def test_the_traefik_middleware_writes_the_description_itself_and_copies_the_identity() -> None:
    middleware = load("traefik.yaml")
    assert (middleware["apiVersion"], middleware["kind"]) == ("traefik.io/v1alpha1", "Middleware")
    forward_auth = middleware["spec"]["forwardAuth"]
    assert set(forward_auth) <= {"address", "trustForwardHeader", "authResponseHeaders"}
    assert forward_auth["address"].endswith(ENDPOINT)
    assert forward_auth["trustForwardHeader"] is False  # a client's X-Forwarded-Uri is never passed on
    assert set(forward_auth["authResponseHeaders"]) >= IDENTITY_HEADERS


def test_the_envoy_filter_asks_with_the_path_prefix_and_fails_closed() -> None:
    config = load("envoy.yaml")
    [listener] = config["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    filters = [f["name"] for f in manager["http_filters"]]
    assert filters == ["envoy.filters.http.ext_authz", "envoy.filters.http.router"]  # authz before routing
    ext_authz = manager["http_filters"][0]["typed_config"]
    assert ext_authz["@type"].endswith("ext_authz.v3.ExtAuthz")
    assert ext_authz["failure_mode_allow"] is False
    service = ext_authz["http_service"]
    assert service["path_prefix"] == ENDPOINT
    assert service["server_uri"]["cluster"] in {c["name"] for c in config["static_resources"]["clusters"]}
    upstream = service["authorization_response"]["allowed_upstream_headers"]["patterns"]
    assert {"prefix": "x-auth-request-"} in upstream
    sent = {p["exact"] for p in service["authorization_request"]["allowed_headers"]["patterns"]}
    assert "authorization" in sent
    assert not any(name.startswith(("x-forwarded-", "x-original-")) for name in sent)


def test_the_nginx_snippet_passes_nginx_t(tmp_path: Path) -> None:
    binary = nginx_binary()
    snippet = EXAMPLES / "nginx.conf"
    body = (
        "  upstream authcar { server 127.0.0.1:4180; }\n"
        "  upstream app { server 127.0.0.1:8080; }\n"
        f"  server {{\n    listen 127.0.0.1:8000;\n    include {snippet};\n  }}\n"
    )
    checked = check_conf(binary, tmp_path, main_conf(tmp_path, body))
    assert checked.returncode == 0, checked.stderr
    text = snippet.read_text()
    for header in IDENTITY_HEADERS:
        assert f"proxy_set_header {header} " in text

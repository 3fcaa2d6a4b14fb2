"""The Helm chart, rendered and linted by real Helm (v4's SDK, offline), validated strictly.

Every values file under helm/data-ingest-connector/ci/ is rendered the way
``helm install -f FILE --set-file objectTypes.NAME=avro/NAME.avsc`` would, linted with
``--strict``, and every manifest is validated against the Kubernetes 1.33 schemas
(kubernetes-validate, strict: unknown fields fail) or, for KEDA's and the Prometheus
Operator's kinds, against the CRDs from those projects' Go modules. Then the behaviour:
probes on the worker's port, secrets only through secretKeyRef, sqlite as a one-replica
StatefulSet, KEDA on the connector's own consumer group, and the refusals.

Not tested here (see the issue): installing into a real API server, and running the
rendered command against a broker and PostgreSQL.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from connector.cli import _load, main
from connector.rest import parse_listen
from connector.worker_cli import load_worker_config
from integration import crd_schemas
from integration.crd_schemas import CRDS

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "data-ingest-connector"
CI_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
CI_IDS = [p.name.removesuffix("-values.yaml") for p in CI_FILES]
KUBE_VERSION = "1.33.0"
RELEASE, NAMESPACE = "ingest", "data"
FULLNAME = f"{RELEASE}-data-ingest-connector"
# The connector's default shutdown.timeout_ms (connector/config.py ShutdownConfig).
DEFAULT_SHUTDOWN_MS = 30_000


def object_types() -> dict[str, str]:
    """``--set-file objectTypes.NAME=avro/NAME.avsc`` for every type of the project."""
    return {p.stem: p.read_text() for p in sorted((ROOT / "avro").glob("*.avsc"))}


def ci_values(name: str) -> dict[str, Any]:
    values = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())
    values["objectTypes"] = object_types()
    return values


_CHART: helm.Chart | None = None


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    return crd_schemas.crd_schema(api_version, kind)


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifests of ``helm template``, NOTES.txt left out."""
    global _CHART
    if _CHART is None:
        _CHART = helm.Chart.load(CHART)
    out = _CHART.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def render_error(values: dict[str, Any]) -> str:
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    return str(caught.value)


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[d['kind'] for d in docs]}"
    return found[0]


def workload(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert len(found) == 1, [d["kind"] for d in docs]
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = workload(docs)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["worker"]
    return dict(containers[0])


def configmap_files(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The files under /etc/data-ingest, as the config volume's items place them."""
    data = one(docs, "ConfigMap")["data"]
    volumes = workload(docs)["spec"]["template"]["spec"]["volumes"]
    config = next(v for v in volumes if v["name"] == "config")
    items = config["configMap"]["items"]
    assert {i["key"] for i in items} == set(data), "every ConfigMap key is mounted, once"
    return {i["path"]: data[i["key"]] for i in items}


_RENDERED: dict[str, list[dict[str, Any]]] = {}


@pytest.fixture(params=CI_IDS)
def ci(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name = str(request.param)
    if name not in _RENDERED:
        _RENDERED[name] = render(ci_values(name))
    return name, _RENDERED[name]


def rendered(name: str) -> list[dict[str, Any]]:
    if name not in _RENDERED:
        _RENDERED[name] = render(ci_values(name))
    return _RENDERED[name]


def test_the_ci_matrix_is_complete() -> None:
    assert set(CI_IDS) >= {
        "minimal",
        "sasl-existing-secret",
        "keda",
        "servicemonitor",
        "sqlite",
        "hpa",
        "everything",
    }


# --- Helm lint and the values schema ---------------------------------------------------


@pytest.mark.parametrize("name", CI_IDS)
def test_helm_lint_strict_passes(name: str) -> None:
    report = helm.lint(CHART, ci_values(name), strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_helm_lint_strict_passes_with_the_defaults() -> None:
    report = helm.lint(CHART, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == [], report


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"replicaCount": "2"}, "/replicaCount': got string, want integer"),
        ({"worker": {"port": 70000}}, "/worker/port"),
        ({"autoscaling": {"keda": {"lagThreshold": "high"}}}, "/autoscaling/keda/lagThreshold"),
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        ({"secrets": {"values": {"KAFKA-PASSWORD": "x"}}}, "invalid propertyName 'KAFKA-PASSWORD'"),
        ({"connectors": {"m": 3}}, "/connectors/m"),
        ({"securityContext": "restricted"}, "/securityContext"),
    ],
)
def test_the_values_schema_rejects_bad_values_naming_them(
    values: dict[str, Any], named: str
) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert any(named in error for error in report["errors"]), report["errors"]
    assert named in render_error(values)


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, sub in schema.get("properties", {}).items():
        paths.add(prefix + key)
        paths |= _schema_paths(sub, f"{prefix}{key}.")
    return paths


def _value_paths(values: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, value in values.items():
        paths.add(prefix + key)
        if isinstance(value, dict) and value:
            paths |= _value_paths(value, f"{prefix}{key}.")
    return paths


def test_the_values_schema_covers_every_value_and_refuses_unknown_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    # Maps of free keys (resources' requests, the pod's securityContext) are described as
    # objects; their own keys are Kubernetes'.
    free = {"resources.requests", "resources.limits", "podSecurityContext", "securityContext"}
    missing = {
        p
        for p in _value_paths(defaults)
        if p not in _schema_paths(schema) and not any(p.startswith(f + ".") for f in free)
    }
    assert missing == set()

    def closed(node: dict[str, Any], at: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{at} accepts unknown keys"
            for key, sub in node["properties"].items():
                closed(sub, f"{at}.{key}")

    closed(schema, "values")


def test_the_readme_values_table_lists_every_top_level_value() -> None:
    readme = (CHART / "README.md").read_text()
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    first_column = re.findall(r"^\| (`[^|]*)\|", readme, re.M)
    listed = {n for cell in first_column for n in re.findall(r"`([A-Za-z]+)[.`]", cell)}
    assert set(defaults) - listed == set()


# --- Schemas: Kubernetes 1.33, strict, and the CRDs -------------------------------------


def test_every_manifest_validates_strictly(ci: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = ci
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRDS:
            jsonschema.validate(doc, crd_schema(*key))
        else:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    """The validators above can fail: an unknown field is an error, for built-ins and CRDs."""
    docs = rendered("everything")
    deployment = json.loads(json.dumps(workload(docs)))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = (
        "/ready"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)
    scaled = json.loads(json.dumps(one(docs, "ScaledObject")))
    scaled["spec"]["maxReplicas"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        jsonschema.validate(scaled, crd_schema("keda.sh/v1alpha1", "ScaledObject"))
    monitor = json.loads(json.dumps(one(docs, "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["interval"] = 30
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, crd_schema("monitoring.coreos.com/v1", "ServiceMonitor"))


def test_the_kinds_of_each_ci_file() -> None:
    base = {"ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount", "Pod"}
    kinds = {name: sorted(d["kind"] for d in rendered(name)) for name in CI_IDS}
    assert set(kinds["minimal"]) == base | {"Secret"}
    assert set(kinds["sasl-existing-secret"]) == base  # the Secret exists already
    assert set(kinds["keda"]) == base | {"Secret", "ScaledObject"}
    assert set(kinds["hpa"]) == base | {"Secret", "HorizontalPodAutoscaler"}
    assert set(kinds["servicemonitor"]) == base | {"Secret", "ServiceMonitor"}
    assert set(kinds["sqlite"]) == base - {"Deployment"} | {"StatefulSet"}
    assert set(kinds["everything"]) == base | {
        "Secret",
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
        "NetworkPolicy",
    }


# --- The pod -----------------------------------------------------------------------------


def test_probes_use_the_workers_port_and_paths(ci: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = ci
    files = configmap_files(docs)
    worker = yaml.safe_load(files["worker.yaml"])
    _host, port = parse_listen(worker["rest"]["listen"])
    c = container(docs)
    assert c["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/ping", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/ping", "port": "http"}
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == FULLNAME)
    assert service["spec"]["ports"] == [
        {"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}
    ]


def test_the_container_runs_the_worker_on_the_mounted_config(
    ci: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = ci
    c = container(docs)
    assert c["command"] == ["data-ingest"]
    assert c["args"][-3:] == ["worker", "-c", "/etc/data-ingest/worker.yaml"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/data-ingest"]["readOnly"] is True
    stateful = workload(docs)["kind"] == "StatefulSet"
    expected = {"/etc/data-ingest", "/tmp"} | ({"/var/lib/data-ingest"} if stateful else set())
    assert set(mounts) == expected


def test_restricted_security_context(ci: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = ci
    pod = workload(docs)["spec"]["template"]["spec"]
    c = container(docs)["securityContext"]
    assert c["runAsNonRoot"] is True and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["readOnlyRootFilesystem"] is True
    assert c["allowPrivilegeEscalation"] is False
    assert c["capabilities"] == {"drop": ["ALL"]}
    assert c["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert container(docs)["resources"]["requests"]["memory"]


def _pipelines(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        Path(path).stem: yaml.safe_load(text)
        for path, text in configmap_files(docs).items()
        if path.startswith("connectors/")
    }


def test_grace_period_is_longer_than_the_shutdown_timeout(
    ci: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = ci
    pipelines = _pipelines(docs)
    assert pipelines
    longest = max(
        p.get("shutdown", {}).get("timeout_ms", DEFAULT_SHUTDOWN_MS) for p in pipelines.values()
    )
    grace = workload(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace * 1000 > longest


def test_a_grace_period_within_the_shutdown_timeout_is_refused() -> None:
    values = ci_values("minimal")
    values["terminationGracePeriodSeconds"] = 30
    assert (
        "terminationGracePeriodSeconds (30) must be greater than the connectors' shutdown "
        "timeout (30 s, shutdown.timeout_ms)" in render_error(values)
    )
    values["terminationGracePeriodSeconds"] = 60
    values["connectors"]["measurements"]["shutdown"] = {"timeout_ms": 90_000}
    assert "shutdown timeout (90 s" in render_error(values)


# --- Secrets -----------------------------------------------------------------------------

PASSWORD = "s3cret-Pa55word-never-in-a-configmap"


def test_no_secret_value_appears_in_any_configmap(ci: tuple[str, list[dict[str, Any]]]) -> None:
    name, _ = ci
    values = ci_values(name)
    if values.get("secrets", {}).get("existingSecret"):
        values["secrets"] = {"values": {}}
    secret_values = {**values.get("secrets", {}).get("values", {}), "KAFKA_PASSWORD": PASSWORD}
    values["secrets"] = {"values": secret_values}
    docs = render(values)
    texts = [json.dumps(d) for d in docs if d["kind"] == "ConfigMap"]
    assert texts
    for value in secret_values.values():
        assert all(value not in text for text in texts), value
    secret = one(docs, "Secret")
    assert base64.b64decode(secret["data"]["KAFKA_PASSWORD"]).decode() == PASSWORD
    # ... and nowhere else but the Secret: not in the pod spec, not in KEDA's objects.
    others = [json.dumps(d) for d in docs if d["kind"] != "Secret"]
    assert all(PASSWORD not in text for text in others)


def test_secrets_reach_the_container_only_through_secret_key_refs(
    ci: tuple[str, list[dict[str, Any]]],
) -> None:
    name, docs = ci
    values = ci_values(name)
    secrets = values.get("secrets", {})
    expected_secret = secrets.get("existingSecret") or FULLNAME
    keys = set(secrets.get("keys") or secrets.get("values", {}))
    env = {e["name"]: e for e in container(docs)["env"]}
    from_secret = {
        n: e["valueFrom"]["secretKeyRef"]
        for n, e in env.items()
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert set(from_secret) == keys
    assert all(ref == {"name": expected_secret, "key": n} for n, ref in from_secret.items())
    for value in secrets.get("values", {}).values():
        assert all(value != e.get("value") for e in env.values())
    assert "envFrom" not in container(docs)
    # Every ${VAR} of the files is set in the container (from the Secret or plainly).
    used = set()
    for text in configmap_files(docs).values():
        used |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    assert used - set(env) == set()


def test_a_literal_password_in_a_pipeline_is_refused() -> None:
    values = ci_values("everything")
    values["connectors"]["measurements"]["kafka"]["security"]["sasl"]["password"] = PASSWORD
    message = render_error(values)
    assert (
        "connectors.measurements: kafka.security.sasl.password must reference a secret as "
        "${VAR}" in message
    )
    assert PASSWORD not in message


def test_a_literal_password_in_the_cluster_section_is_refused() -> None:
    values = ci_values("minimal")
    values["worker"] = {
        "cluster": {
            "id": "ingest-prod",
            "kafka": {
                "bootstrap_servers": "${KAFKA_BOOTSTRAP_SERVERS}",
                "security": {
                    "protocol": "SASL_SSL",
                    "sasl": {"mechanism": "PLAIN", "username": "u", "password": PASSWORD},
                },
            },
        }
    }
    message = render_error(values)
    assert "worker.cluster.kafka.security.sasl.password must reference a secret" in message
    assert PASSWORD not in message
    values["worker"]["cluster"]["kafka"]["security"]["sasl"]["password"] = "${KAFKA_PASSWORD}"
    values["secrets"]["values"]["KAFKA_PASSWORD"] = PASSWORD
    files = configmap_files(render(values))
    worker = yaml.safe_load(files["worker.yaml"])
    assert worker["cluster"]["kafka"]["security"]["sasl"]["password"] == "${KAFKA_PASSWORD}"
    assert all(PASSWORD not in text for text in files.values())


def test_sasl_needs_its_key_in_the_secret() -> None:
    values = ci_values("everything")
    del values["secrets"]["values"]["KAFKA_PASSWORD"]
    assert "kafka.sasl.enabled: the Secret has no key KAFKA_PASSWORD" in render_error(values)


def test_the_rest_token_comes_from_the_secret() -> None:
    docs = rendered("everything")
    worker = yaml.safe_load(configmap_files(docs)["worker.yaml"])
    assert worker["rest"]["token"] == "${REST_TOKEN}"
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["REST_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": FULLNAME, "key": "REST_TOKEN"}


# --- The rendered files are valid for the connector ------------------------------------


def test_rendered_files_pass_the_connectors_own_checks(
    ci: tuple[str, list[dict[str, Any]]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``data-ingest validate`` checks before it connects, and ``schemas check``."""
    _, docs = ci
    for path, text in configmap_files(docs).items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    env = {e["name"]: e.get("value", f"value-of-{e['name']}") for e in container(docs)["env"]}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    worker = load_worker_config(tmp_path / "worker.yaml")
    assert worker.connectors_dir == "connectors"
    pipelines = sorted((tmp_path / "connectors").glob("*.yaml"))
    assert pipelines
    for pipeline in pipelines:
        config, types = _load(str(pipeline))
        assert {r.type for r in config.routes} <= set(types.names())
    # `data-ingest schemas check DIR`, in-process (the same main() as the console script).
    assert main(["schemas", "check", str(tmp_path / "avro")]) == 0


# --- SQLite: a StatefulSet, one replica --------------------------------------------------


def test_sqlite_runs_a_one_replica_statefulset_with_a_volume() -> None:
    docs = rendered("sqlite")
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 1
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "data")
    assert mount["mountPath"] == "/var/lib/data-ingest"
    assert _pipelines(docs)["measurements"]["backend"]["path"].startswith(mount["mountPath"] + "/")
    headless = next(d for d in docs if d["metadata"]["name"] == sts["spec"]["serviceName"])
    assert headless["kind"] == "Service" and headless["spec"]["clusterIP"] == "None"


def test_sqlite_refuses_more_than_one_replica() -> None:
    values = ci_values("sqlite")
    values["replicaCount"] = 2
    assert (
        "replicaCount is 2, but connector measurements uses the sqlite backend: an SQLite file "
        "lives on one volume and takes one writer, so the chart runs exactly one replica "
        "(a StatefulSet). Set replicaCount: 1, or use the postgres or mongodb backend to run "
        "more." in render_error(values)
    )


def test_sqlite_refuses_autoscaling_and_a_file_off_the_volume() -> None:
    values = ci_values("sqlite")
    values["autoscaling"] = {"hpa": {"enabled": True}}
    assert (
        "autoscaling is enabled, but connector measurements uses the sqlite backend"
        in render_error(values)
    )
    values = ci_values("sqlite")
    values["connectors"]["measurements"]["backend"]["path"] = "/data/ingest.db"
    assert 'backend.path "/data/ingest.db" is not on the persistent volume' in render_error(values)


# --- Autoscaling -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["keda", "everything"])
def test_keda_scales_by_the_lag_of_the_connectors_own_group(name: str) -> None:
    docs = rendered(name)
    values = ci_values(name)
    keda = values["autoscaling"]["keda"]
    pipeline = _pipelines(docs)[keda["connector"]]
    scaled = one(docs, "ScaledObject")
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    [trigger] = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["consumerGroup"] == pipeline["kafka"]["group_id"]
    assert meta["topic"] == pipeline["routes"][0]["topic"]
    assert meta["bootstrapServers"] == values["kafka"]["bootstrapServers"]
    env = {e["name"]: e.get("value") for e in container(docs)["env"]}
    assert pipeline["kafka"]["bootstrap_servers"] == "${KAFKA_BOOTSTRAP_SERVERS}"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == meta["bootstrapServers"]
    assert meta["lagThreshold"] == str(keda["lagThreshold"])
    assert meta["allowIdleConsumers"] == "false"
    assert scaled["spec"]["maxReplicaCount"] == keda["maxReplicaCount"]
    assert scaled["spec"]["maxReplicaCount"] <= keda["partitions"]
    assert scaled["spec"]["minReplicaCount"] == keda["minReplicaCount"]


def test_keda_uses_sasl_through_a_trigger_authentication() -> None:
    docs = rendered("everything")
    scaled = one(docs, "ScaledObject")
    auth = one(docs, "TriggerAuthentication")
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert trigger["metadata"]["sasl"] == "scram_sha256"
    assert trigger["metadata"]["tls"] == "enable"
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "username", "name": FULLNAME, "key": "KAFKA_USER"},
        {"parameter": "password", "name": FULLNAME, "key": "KAFKA_PASSWORD"},
    ]
    values = ci_values("sasl-existing-secret")
    values["autoscaling"] = {"keda": {"enabled": True, "connector": "measurements"}}
    docs = render(values)
    refs = one(docs, "TriggerAuthentication")["spec"]["secretTargetRef"]
    assert {r["name"] for r in refs} == {"kafka-credentials"}
    assert one(docs, "ScaledObject")["spec"]["triggers"][0]["metadata"]["sasl"] == "scram_sha512"


def test_keda_refuses_more_replicas_than_partitions() -> None:
    values = ci_values("keda")
    values["autoscaling"]["keda"]["maxReplicaCount"] = 7
    assert (
        "autoscaling.keda.maxReplicaCount (7) is above autoscaling.keda.partitions (6)"
        in render_error(values)
    )


def test_keda_refuses_an_unknown_connector() -> None:
    values = ci_values("keda")
    values["autoscaling"]["keda"]["connector"] = "invoices"
    assert 'autoscaling.keda.connector "invoices" is not a key of connectors' in render_error(
        values
    )


def test_hpa_is_the_alternative_and_not_both() -> None:
    docs = rendered("hpa")
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 60},
    }
    assert "replicas" not in one(docs, "Deployment")["spec"]
    values = ci_values("keda")
    values["autoscaling"]["hpa"] = {"enabled": True}
    assert "autoscaling.keda.enabled and autoscaling.hpa.enabled are both true" in render_error(
        values
    )


# --- PDB, ServiceAccount, Service, ServiceMonitor, NetworkPolicy, helm test -------------


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_pdb_service_account_and_service_select_the_worker(
    ci: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = ci
    template = workload(docs)["spec"]["template"]
    labels = template["metadata"]["labels"]
    pdb = one(docs, "PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert ("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"])
    sa = one(docs, "ServiceAccount")
    assert template["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert sa["automountServiceAccountToken"] is False
    for service in (d for d in docs if d["kind"] == "Service"):
        assert _selects(service["spec"]["selector"], labels)


def test_pdb_by_min_available() -> None:
    pdb = one(rendered("everything"), "PodDisruptionBudget")
    assert pdb["spec"] == {**pdb["spec"], "minAvailable": 1}
    assert "maxUnavailable" not in pdb["spec"]
    assert one(rendered("minimal"), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("name", ["servicemonitor", "everything"])
def test_the_service_monitor_scrapes_metrics_from_the_service(name: str) -> None:
    docs = rendered(name)
    monitor = one(docs, "ServiceMonitor")
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == FULLNAME)
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_the_network_policy_opens_the_rest_port_and_the_listed_egress() -> None:
    docs = rendered("everything")
    policy = one(docs, "NetworkPolicy")
    labels = workload(docs)["spec"]["template"]["metadata"]["labels"]
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], labels)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    [ingress] = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert ingress["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    egress_ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]]
    assert egress_ports == [53, 53, 9093, 5432]


def test_helm_test_pod_calls_ready_through_the_service(
    ci: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = ci
    pod = one(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    port = container(docs)["ports"][0]["containerPort"]
    script = pod["spec"]["containers"][0]["command"][-1]
    assert f'"http://{FULLNAME}:{port}/ready"' in script
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


# --- The image ---------------------------------------------------------------------------


def test_the_dockerfile_matches_the_chart() -> None:
    """The chart's command and config path are the image's; the image runs as non-root."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.lstrip().startswith("#")
    assert re.search(r"^ARG BASE_IMAGE=\S+", dockerfile, re.M)
    assert len(re.findall(r"^FROM \$\{BASE_IMAGE\}", dockerfile, re.M)) == 2
    assert 'ENTRYPOINT ["data-ingest"]' in dockerfile
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))  # type: ignore[union-attr]
    assert cmd == container(rendered("minimal"))["args"][-3:]
    user = re.search(r"^USER (\S+)$", dockerfile, re.M).group(1)  # type: ignore[union-attr]
    uid = re.search(r"^ARG UID=(\d+)$", dockerfile, re.M).group(1)  # type: ignore[union-attr]
    assert user == "${UID}:${UID}" and int(uid) != 0
    pod = workload(rendered("minimal"))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(uid)

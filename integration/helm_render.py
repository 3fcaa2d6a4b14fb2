"""The Helm chart rendered for a local run: its files, environment and command, as a pod
would get them (used by test_helm_rendered.py and test_image.py)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "data-ingest-connector"
POD_NAME = "ingest-data-ingest-connector-0"


@dataclass
class RenderedWorker:
    pod: dict[str, Any]  # the Deployment's pod spec
    container: dict[str, Any]
    env: dict[str, str]  # as the kubelet sets it: values, secretKeyRefs, the pod name
    secret: dict[str, str]  # the chart-made Secret, decoded
    configmap: dict[str, str]

    @property
    def grace(self) -> int:
        return int(self.pod["terminationGracePeriodSeconds"])

    def write_config(self, etc: Path) -> None:
        """The config volume's files under ``etc`` (the pod's /etc/data-ingest)."""
        [volume] = [v for v in self.pod["volumes"] if v["name"] == "config"]
        for item in volume["configMap"]["items"]:
            (etc / item["path"]).parent.mkdir(parents=True, exist_ok=True)
            (etc / item["path"]).write_text(self.configmap[item["key"]])


def postgres_values(
    bootstrap: str, dsn: str, schema: str, topic: str, group: str, port: int
) -> dict[str, Any]:
    """ci/minimal-values.yaml pointed at a test broker and PostgreSQL server.

    The password reaches the DSN only through Secret -> env -> ${POSTGRES_PASSWORD} (the test
    server trusts loopback, so any password is accepted).
    """
    values: dict[str, Any] = yaml.safe_load((CHART / "ci" / "minimal-values.yaml").read_text())
    user, host = dsn.split("://", 1)[1].split("@", 1)
    values["kafka"]["bootstrapServers"] = bootstrap
    values["worker"] = {"port": port}
    pipeline = values["connectors"]["measurements"]
    pipeline["kafka"]["group_id"] = group
    pipeline["routes"] = [{"topic": topic, "type": "Measurement", "format": "json"}]
    pipeline["backend"]["dsn"] = f"postgresql://{user}:${{POSTGRES_PASSWORD}}@{host}"
    pipeline["backend"]["schema"] = schema
    values["objectTypes"] = {p.stem: p.read_text() for p in (ROOT / "avro").glob("*.avsc")}
    return values


def render_worker(values: dict[str, Any]) -> RenderedWorker:
    manifests = helm.Chart.load(CHART).render(values, name="ingest", namespace="data")
    docs = [
        d
        for path, text in manifests.items()
        if not path.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d
    ]
    by_kind = {d["kind"]: d for d in docs}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    secret = {k: base64.b64decode(v).decode() for k, v in by_kind["Secret"]["data"].items()}
    env: dict[str, str] = {}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif "secretKeyRef" in entry["valueFrom"]:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] == by_kind["Secret"]["metadata"]["name"]
            env[entry["name"]] = secret[ref["key"]]
        else:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[entry["name"]] = POD_NAME
    return RenderedWorker(pod, container, env, secret, by_kind["ConfigMap"]["data"])

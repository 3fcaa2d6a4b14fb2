"""JSON schemas of the custom resources the Helm chart renders, from the projects' own CRDs.

KEDA's ScaledObject and TriggerAuthentication and the Prometheus Operator's ServiceMonitor
are not Kubernetes built-ins, so kubernetes-validate has no schema for them. Their CRDs are
read from the projects' Go modules, fetched by name with ``go mod download -json`` into
``$DATA_INGEST_CACHE/go/mod`` (about a second once cached), and each CRD's
``openAPIV3Schema`` is turned into a strict JSON schema: unknown fields are refused (as
``kubectl apply --validate=strict`` does), ``x-kubernetes-int-or-string`` and ``nullable``
become JSON schema types.

    python -m integration.crd_schemas      # fetch the modules and print the schema files
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from integration.artifacts import ArtifactError, cache_dir, file_lock

KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_VERSION = "v2.17.2"
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
PROMETHEUS_OPERATOR_VERSION = "v0.85.0"

# (apiVersion, kind) -> (module, version, file in the module)
CRDS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("keda.sh/v1alpha1", "ScaledObject"): (
        KEDA_MODULE,
        KEDA_VERSION,
        "config/crd/bases/keda.sh_scaledobjects.yaml",
    ),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): (
        KEDA_MODULE,
        KEDA_VERSION,
        "config/crd/bases/keda.sh_triggerauthentications.yaml",
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (
        PROMETHEUS_OPERATOR_MODULE,
        PROMETHEUS_OPERATOR_VERSION,
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
    ),
}


def module_dir(module: str, version: str) -> Path:
    """The module's source in the Go module cache, downloaded by name if needed."""
    go = shutil.which("go")
    if go is None:
        raise ArtifactError(
            "the Go toolchain (`go`) is needed to fetch the KEDA and Prometheus Operator CRDs "
            "from their Go modules; install it (it also builds FerretDB for `make services`)"
        )
    cache = cache_dir()
    env = {
        **os.environ,
        "GOPATH": str(cache / "go"),
        "GOMODCACHE": str(cache / "go" / "mod"),
        "GOFLAGS": "-modcacherw",
        "GO111MODULE": "on",
    }
    with file_lock(cache / "crd-modules.lock"):
        done = subprocess.run(
            [go, "mod", "download", "-json", f"{module}@{version}"],
            cwd=cache,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    try:
        info = json.loads(done.stdout)
    except json.JSONDecodeError:
        info = {}
    if done.returncode != 0 or "Dir" not in info:
        raise ArtifactError(
            f"go mod download {module}@{version} failed: {info.get('Error') or done.stderr}"
        )
    return Path(info["Dir"])


def crd_json_schema(node: Any, *, preserve: bool = False) -> Any:
    """One ``openAPIV3Schema`` node as a strict JSON schema."""
    if isinstance(node, list):
        return [crd_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: crd_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = crd_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [crd_json_schema(item) for item in value]
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
        # The CRD's anyOf [{type: integer}, {type: string}] says the same.
        out.pop("anyOf", None)
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The strict JSON schema of one custom resource kind, at the pinned module versions."""
    module, version, file = CRDS[(api_version, kind)]
    crd = yaml.safe_load((module_dir(module, version) / file).read_text(encoding="utf-8"))
    served = api_version.split("/", 1)[1]
    for entry in crd["spec"]["versions"]:
        if entry["name"] == served:
            schema: dict[str, Any] = crd_json_schema(entry["schema"]["openAPIV3Schema"])
            schema["$schema"] = "http://json-schema.org/draft-07/schema#"
            return schema
    raise ArtifactError(f"{file} in {module}@{version} does not serve {api_version}")


def main() -> int:
    for api_version, kind in CRDS:
        schema = crd_schema(api_version, kind)
        print(f"{api_version} {kind}: {len(json.dumps(schema))} bytes of JSON schema")
    return 0


if __name__ == "__main__":
    sys.exit(main())

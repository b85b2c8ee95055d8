"""Validates rendered Kubernetes YAML offline; run by the tools venv's Python (.venv-k8s).

Built-in kinds against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown
fields are errors); custom resources against tests/deploy/crd-schemas (jsonschema). Prints
one JSON object: {"checked": [[file, kind, name], ...], "errors": [[file, kind, name, why]]}.
A kind with neither schema is an error, so nothing passes unchecked.
Usage: python k8s_validate.py KUBERNETES_VERSION FILE...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

CRD_SCHEMAS = Path(__file__).resolve().parent / "crd-schemas"


def crd_schema(doc: dict[str, Any]) -> dict[str, Any] | None:
    group_version = str(doc.get("apiVersion", "")).replace("/", "_")
    path = CRD_SCHEMAS / f"{group_version}_{doc.get('kind')}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def check(doc: dict[str, Any], version: str) -> str | None:
    """None when the object is valid, else why not."""
    schema = crd_schema(doc)
    if schema is not None:
        try:
            jsonschema.validate(doc, schema)
        except jsonschema.ValidationError as exc:
            return f"{'/'.join(str(p) for p in exc.absolute_path)}: {exc.message}"
        return None
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return "no schema: neither a Kubernetes kind nor one in tests/deploy/crd-schemas"
    except kubernetes_validate.ValidationError as exc:
        return f"{'/'.join(str(p) for p in exc.path)}: {exc.message}"
    return None


def main(version: str, files: list[str]) -> None:
    checked: list[list[str]] = []
    errors: list[list[str]] = []
    for name in files:
        for doc in yaml.safe_load_all(Path(name).read_text()):
            if not doc:
                continue
            where = [name, str(doc.get("kind")), str(doc.get("metadata", {}).get("name"))]
            checked.append(where)
            why = check(doc, version)
            if why:
                errors.append([*where, why])
    print(json.dumps({"checked": checked, "errors": errors}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

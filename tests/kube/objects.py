"""Kubernetes objects the real-operator tests make (tests/realops, tests/realrust), and the
JSON Lines their operators write."""

from __future__ import annotations

import json
import time
from pathlib import Path

from kubernetes import client


def install_crd(api_client: client.ApiClient, body: dict, timeout: float = 30) -> None:
    """Create a CustomResourceDefinition (if it is not there) and wait until Established."""
    ext = client.ApiextensionsV1Api(api_client)
    try:
        ext.create_custom_resource_definition(body)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    name = body["metadata"]["name"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        crd = ext.read_custom_resource_definition(name)
        if any(c.type == "Established" and c.status == "True"
               for c in (crd.status.conditions or [])):
            return
        time.sleep(0.1)
    raise AssertionError(f"CRD {name} not Established after {timeout} s")


def create_namespace(api_client: client.ApiClient, name: str) -> str:
    client.CoreV1Api(api_client).create_namespace({"metadata": {"name": name}})
    return name


def read_jsonl(path: Path) -> list[dict]:
    """Whole lines only: an operator writes through a buffer, a line may be half out."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1] if line.strip()]

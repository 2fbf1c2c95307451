"""Fixtures for the real kube-rs operator (samples/kube-rs-operator) against a real
kube-apiserver 1.20 (tests/kube/cluster.py). Helpers are in realrust/operators.py.

  rust_cluster   (module)  KubeCluster with the Widget CRD installed
  rust_namespace (test)    a fresh namespace (created)
  rust_operator  (test)    start(build, namespace=None, **kw) -> RustOperator, ground truth in
                           tmp_path; every operator started is ended by PID at teardown
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from kube.cluster import KubeCluster, start_cluster

from .operators import BUILDS, RustOperator, binary, create_namespace, install_crd, start_operator


@pytest.fixture(scope="module")
def rust_cluster(tmp_path_factory) -> Iterator[KubeCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("kube"))
    try:
        install_crd(cluster.api_client, binary(next(iter(BUILDS))))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def rust_namespace(rust_cluster) -> str:
    return create_namespace(rust_cluster.api_client, f"krs-{os.urandom(4).hex()}")


@pytest.fixture
def rust_operator(rust_cluster, tmp_path) -> Iterator:
    started: list[RustOperator] = []

    def start(build: str, namespace: str | None = None, **kw) -> RustOperator:
        path = BUILDS[build].binary if build in BUILDS else build
        op = start_operator(path, rust_cluster.kubeconfig,
                            tmp_path / f"truth-{len(started)}.jsonl", namespace=namespace, **kw)
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()

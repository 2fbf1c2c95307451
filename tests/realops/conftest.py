"""Fixtures for the real controller-runtime operators (samples/cr-operator) against a real
kube-apiserver 1.20 (tests/kube/cluster.py). Helpers are in realops/operators.py.

  realops_cluster (module)  KubeCluster with the Memcached CRD installed (one API server per
                            test module)
  cr_namespace    (test)    a fresh namespace name (created; namespaces stay: no controller
                            finishes them)
  cr_operator     (test)    start(build_or_binary, namespace=None, **kw) -> RealOperator:
                            operators.start_operator against realops_cluster, ground truth in
                            tmp_path; `namespace` is also the leader-election Lease's namespace.
                            Every operator started is ended by PID at teardown.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube.cluster import KubeCluster, start_cluster

from .operators import CR_BUILDS, RealOperator, create_namespace, install_crd, start_operator


@pytest.fixture(scope="module")
def realops_cluster(tmp_path_factory) -> Iterator[KubeCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("kube"))
    try:
        install_crd(cluster.api_client)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cr_namespace(realops_cluster) -> str:
    return create_namespace(realops_cluster.api_client, f"crop-{os.urandom(4).hex()}")


@pytest.fixture
def cr_operator(realops_cluster, tmp_path) -> Iterator:
    started: list[RealOperator] = []

    def start(build: str | Path, namespace: str | None = None, **kw) -> RealOperator:
        binary = CR_BUILDS[build].binary if str(build) in CR_BUILDS else Path(build)
        kw.setdefault("leader_namespace", namespace or "default")
        op = start_operator(binary, realops_cluster.kubeconfig,
                            tmp_path / f"truth-{len(started)}.jsonl", namespace=namespace, **kw)
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()

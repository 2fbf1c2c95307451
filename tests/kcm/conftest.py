"""Fixtures for kube-controller-manager (tests/kcm/kcm.py) against a real kube-apiserver 1.20
(tests/kube/cluster.py).

  kcm_cluster  (module)  KubeCluster, one API server for the module
  kcm          (test)    start(variant) -> Kcm: kube-controller-manager "dwarf" or "stripped",
                         its controllers synced; every one started is ended by PID at teardown
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kube.cluster import KubeCluster, start_cluster

from .kcm import Kcm, start_kcm


@pytest.fixture(scope="module")
def kcm_cluster(tmp_path_factory) -> Iterator[KubeCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("kube"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def kcm(kcm_cluster, tmp_path) -> Iterator:
    started: list[Kcm] = []

    def start(variant: str) -> Kcm:
        manager = start_kcm(variant, kcm_cluster.kubeconfig, tmp_path)
        started.append(manager)
        return manager

    yield start
    for manager in started:
        manager.stop()

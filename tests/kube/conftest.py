"""Fixtures: a session-wide real kube-apiserver + etcd, and per-test pods with real processes.

  kube_cluster  (session)  KubeCluster: server, ca, kubeconfig (admin), denied_kubeconfig,
                           admin_token, denied_token, api_client, core, node_name
  kube          (test)     Kube: pod(), pending_pod(), pod_elsewhere(), deployment(), lease(),
                           namespace(), track(); deletes the objects and ends the processes
                           by PID at teardown (namespaces stay: no controller finishes them)
  kube_pod      (test)     kube.pod
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .cluster import KubeCluster, start_cluster
from .pods import Kube


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory) -> Iterator[KubeCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("kube"))
    yield cluster
    cluster.stop()


@pytest.fixture
def kube(kube_cluster, tmp_path) -> Iterator[Kube]:
    objects = Kube(kube_cluster, tmp_path)
    yield objects
    objects.cleanup()


@pytest.fixture
def kube_pod(kube):
    return kube.pod

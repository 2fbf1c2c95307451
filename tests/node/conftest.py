"""Fixtures: `node_cluster` (session), a real one-node cluster; see tests/node/cluster.py."""

from __future__ import annotations

import pytest

from .cluster import node_cluster_fixture

node_cluster = pytest.fixture(scope="session")(node_cluster_fixture)

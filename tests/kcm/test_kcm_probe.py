"""probes/kube-controller-manager.toml against the real binary: the functions it names exist
(stripped too: names from the pclntab), and each has the signature its decoders assume, read
from the DWARF of the build that has it (nothing in the stripped build tells a method value's
signature, which is why the probe names exact functions)."""

from __future__ import annotations

from elftools.elf.elffile import ELFFile

from tracer.binary.analyze import analyze
from tracer.probes import compile as probe_compile
from tracer.probes import library

from .kcm import SYNC, binary

PROBE = "kube-controller-manager"
# What each decoder takes the parameters (receiver first) and results to be.
ENTRY_SHAPES = {"go-key": ("string",), "go-namespace-name": ("string", "string")}
ONE_REGISTER = ("bool", "int", "uintptr")


def _type_name(die) -> str:
    t = die.get_DIE_from_attribute("DW_AT_type")
    return t.attributes["DW_AT_name"].value.decode()


def _signatures(path, names: set[str]) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (parameter types, result types) from DWARF, reading only the compile units
    of the functions' packages (Go writes one unit per package, named by its path)."""
    packages = {n.partition(".(")[0] for n in names}
    found: dict[str, tuple[list[str], list[str]]] = {}
    with open(path, "rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        for cu in dwarf.iter_CUs():
            name = cu.get_top_DIE().attributes.get("DW_AT_name")
            if name is None or name.value.decode() not in packages:
                continue
            for die in cu.iter_DIEs():
                if die.tag != "DW_TAG_subprogram" or "DW_AT_name" not in die.attributes:
                    continue
                fn = die.attributes["DW_AT_name"].value.decode()
                if fn not in names:
                    continue
                params, results = [], []
                for child in die.iter_children():
                    if child.tag != "DW_TAG_formal_parameter":
                        continue
                    out = child.attributes.get("DW_AT_variable_parameter")
                    (results if out is not None and out.value else params).append(
                        _type_name(child))
                found[fn] = (params, results)
    return found


def test_every_named_function_has_the_signature_its_decoders_read():
    path = binary("dwarf")
    info = analyze(str(path))
    probe = library.resolve(PROBE)
    functions = probe_compile._from_probe(info, probe)
    names = {fn.name for fn, _ in functions}
    assert set(SYNC.values()) <= names
    signatures = _signatures(path, names)
    assert set(signatures) == names, names - set(signatures)
    for fn, spec in functions:
        params, results = signatures[fn.name]
        assert params[0].startswith("*"), (fn.name, params)  # the receiver
        assert tuple(params[1:]) == ENTRY_SHAPES[spec.entry], (fn.name, params)
        if spec.exit == "go-error":
            assert results == ["error"], (fn.name, results)
        else:
            assert spec.exit == "go-second-error"
            assert len(results) == 2 and results[1] == "error", (fn.name, results)
            assert results[0] in ONE_REGISTER or results[0].startswith("*"), (fn.name, results)

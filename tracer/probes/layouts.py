"""controller-runtime's request and result as each binary lays them out.

`reconcile.Result` grew a field in controller-runtime v0.23 (`Priority *int`), which moves
the returned error from RCX/RDI to RDI/RSI; a reconciler's request is its own type with
typed reconcilers; and operators have methods named Reconcile that are not reconcilers at
all (sub-reconcilers taking the object). So a function a probe decodes as "cr-request" /
"cr-result" is checked against its real signature, read from the runtime type data of the
interface it is called through (tracer.binary.gomethods; works stripped), and the
controller-runtime version in the Go build info is checked against it. A value whose layout
is not known for sure is not decoded, and the plan's notes say why.
"""

from __future__ import annotations

import dataclasses

from tracer.binary import gotypes
from tracer.binary.elfimage import ElfImage
from tracer.binary.gomethods import Signature, method_signatures
from tracer.binary.govalues import KNOWN_ERRORS, GoMemory, unvendored
from tracer.binary.model import BinaryError, BinaryInfo, Function
from tracer.probes import decoders
from tracer.probes.spec import FunctionSpec

CONTROLLER_RUNTIME = "sigs.k8s.io/controller-runtime"
RECONCILE_PACKAGE = CONTROLLER_RUNTIME + "/pkg/reconcile"  # its Reconciler interfaces
PRIORITY_SINCE = (0, 23)  # reconcile.Result.Priority

# Result fields, (name, kind, offset), of each layout -> the exit decoder that reads it.
RESULT_LAYOUTS = {
    (("Requeue", gotypes.KIND_BOOL, 0), ("RequeueAfter", gotypes.KIND_INT64, 8)):
        "cr-result",
    (("Requeue", gotypes.KIND_BOOL, 0), ("RequeueAfter", gotypes.KIND_INT64, 8),
     ("Priority", gotypes.KIND_POINTER, 16)): "cr-result-priority",
}
# A request is two strings, Namespace then Name (reconcile.Request embeds NamespacedName).
REQUEST_LAYOUT = (("Namespace", gotypes.KIND_STRING, 0), ("Name", gotypes.KIND_STRING, 16))
# An object (ObjectReconciler): where its metadata's name and namespace are.
OBJECT_FIELDS = {("ObjectMeta", "Name"): decoders.OBJECT_NAME_AT,
                 ("ObjectMeta", "Namespace"): decoders.OBJECT_NAMESPACE_AT}


def _version(text: str | None) -> tuple[int, int] | None:
    if not text or not text.startswith("v"):
        return None
    parts = text[1:].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def _flat(read, struct_type: int, base: int = 0, depth: int = 0) -> list[tuple]:
    """A struct's leaf fields as (name, kind, offset), embedded structs flattened."""
    out: list[tuple] = []
    for name, typ, off in gotypes.struct_fields(read, struct_type):
        kind = gotypes.type_kind(read, typ)
        if kind == gotypes.KIND_STRUCT and depth < 4:
            out += _flat(read, typ, base + off, depth + 1)
        else:
            out.append((name, kind, base + off))
    return out


@dataclasses.dataclass
class Shape:
    request: str | None  # the entry decoder: a request, an object, or None (not known)
    result: str | None  # the exit decoder, None if the result's layout is not known
    result_fields: tuple[str, ...]
    interface: str
    by_controller_runtime: bool  # called through one of controller-runtime's interfaces


def _object_at(read, typ: int) -> bool:
    """Whether `typ` is a pointer to a Kubernetes object whose metadata's name and namespace
    sit where the cr-object decoder reads them."""
    if gotypes.type_kind(read, typ) != gotypes.KIND_POINTER:
        return False
    target = gotypes.pointer_elem(read, typ)
    if not target or gotypes.type_kind(read, target) != gotypes.KIND_STRUCT:
        return False
    found = {}
    for name, ftype, off in gotypes.struct_fields(read, target):
        if name == "ObjectMeta" and gotypes.type_kind(read, ftype) == gotypes.KIND_STRUCT:
            for inner, itype, ioff in gotypes.struct_fields(read, ftype):
                if ("ObjectMeta", inner) in OBJECT_FIELDS \
                        and gotypes.type_kind(read, itype) == gotypes.KIND_STRING:
                    found[("ObjectMeta", inner)] = off + ioff
    return found == OBJECT_FIELDS


def _shape(read, sig: Signature) -> Shape | None:
    """What a (ctx, request) (result, error) signature holds, or None for another shape."""
    if len(sig.params) != 2 or len(sig.results) != 2:
        return None
    ctx, req = sig.params
    result, err = sig.results
    if gotypes.type_kind(read, ctx) != gotypes.KIND_INTERFACE \
            or gotypes.type_kind(read, err) != gotypes.KIND_INTERFACE \
            or gotypes.type_kind(read, result) != gotypes.KIND_STRUCT:
        return None
    request = None
    if gotypes.type_kind(read, req) == gotypes.KIND_STRUCT and tuple(
            _flat(read, req)) == REQUEST_LAYOUT:
        request = "cr-request"
    elif _object_at(read, req):
        request = "cr-object"
    fields = tuple((n, k, o) for n, _t, o in gotypes.struct_fields(read, result)
                   for k in [gotypes.type_kind(read, _t)])
    return Shape(request, RESULT_LAYOUTS.get(fields), tuple(f[0] for f in fields),
                 sig.interface, sig.interface_pkg == RECONCILE_PACKAGE)


def resolve(info: BinaryInfo, functions: list[tuple[Function, FunctionSpec]],
            notes: list[str]) -> list[tuple[Function, FunctionSpec]]:
    """The functions with controller-runtime decoders checked against each one's signature:
    sub-reconcilers (no request parameter) are dropped, the result decoder is the binary's
    layout or none. Other functions pass unchanged."""
    def wanted(fs: FunctionSpec) -> bool:
        return fs.entry == "cr-request" or fs.exit == "cr-result"

    if info.language != "go" or not any(wanted(fs) for _fn, fs in functions):
        return functions
    cr = info.go_modules.get(CONTROLLER_RUNTIME)
    expected = None
    if _version(cr) is not None:
        expected = "cr-result-priority" if _version(cr) >= PRIORITY_SINCE else "cr-result"
    out: list[tuple[Function, FunctionSpec]] = []
    said: set[str] = set()
    try:
        img = ElfImage(info.path)
    except BinaryError:
        img = None
    try:
        for fn, fs in functions:
            if not wanted(fs):
                out.append((fn, fs))
                continue
            shapes = []
            if img is not None:
                for sig in method_signatures(img, info, fn):
                    try:
                        shape = _shape(img.read, sig)
                    except (BinaryError, gotypes.TypeDecodeError, ValueError):
                        shape = None
                    if shape is not None:
                        shapes.append(shape)
            kept = _decide(fn, fs, shapes, cr, expected, notes, said)
            if kept is not None:
                out.append((fn, kept))
    finally:
        if img is not None:
            img.close()
    return out


def _decide(fn: Function, fs: FunctionSpec, shapes: list[Shape], cr: str | None,
            expected: str | None, notes: list[str], said: set[str]) -> FunctionSpec | None:
    # A reconciler: called through controller-runtime's own interfaces, or with a request.
    # Anything else named Reconcile (a sub-reconciler taking the object) is not.
    reconcilers = [s for s in shapes if s.by_controller_runtime or s.request == "cr-request"]
    if shapes and not reconcilers:
        notes.append(f"{fn.name} is not a reconciler (called as {shapes[0].interface}, "
                     "without a request): not traced")
        return None
    if not shapes:
        if cr is not None:
            notes.append(f"{fn.name} is never called through an interface, so not by "
                         f"controller-runtime: not traced")
            return None
        notes.append(f"{fn.name}: its signature is not in the binary's type data (a PIE "
                     "build, or never called through an interface): request and result "
                     "not decoded")
        return dataclasses.replace(fs, entry=None, exit=None)
    shape = reconcilers[0]
    exit_decoder = shape.result if fs.exit == "cr-result" else fs.exit
    entry_decoder = fs.entry
    if fs.entry == "cr-request":
        entry_decoder = shape.request
        if shape.request is None:
            notes.append(f"{fn.name}: its request (called as {shape.interface}) has no known "
                         "layout: request not decoded")
    if fs.exit == "cr-result":
        layout = "{" + ", ".join(shape.result_fields) + "}"
        if shape.result is None:
            notes.append(f"{fn.name}: result {layout} has no known layout: result and error "
                         "not decoded")
        elif expected is not None and expected != shape.result and "mismatch" not in said:
            said.add("mismatch")
            notes.append(f"controller-runtime {cr} in the build info, but Result is {layout} "
                         "in the binary's type data: decoded as the type data says")
        elif layout not in said:
            said.add(layout)
            where = f"controller-runtime {cr}" if cr else "the binary's own Result type"
            notes.append(f"result layout: Result {layout} ({where}, from the runtime type "
                         "data)")
    return dataclasses.replace(fs, entry=entry_decoder, exit=exit_decoder)


def error_slots(info: BinaryInfo) -> decoders.ErrorSlots:
    """Where the known error types of this binary keep the fields uprobes should read: each
    type found through the itab of its Error method, its fields located by name in its type
    descriptor. A type the binary does not have (or a PIE build) adds no slot."""
    slots: dict[int, str] = dict(decoders.STD_ERROR_SLOTS)
    if info.language != "go" or info.go_types_base is None:
        return tuple(sorted(slots.items()))
    try:
        img = ElfImage(info.path)
    except BinaryError:
        return tuple(sorted(slots.items()))
    try:
        memory = GoMemory(img.read, info.go_types_base, None)
        error_methods = {}
        for fn in info.functions:  # by name, a GOPATH build's vendor/ prefix left out
            if fn.name.endswith(").Error") and "(*" in fn.name:
                package, _, rest = fn.name.rpartition(".(*")
                error_methods.setdefault((unvendored(package), rest[:-len(").Error")]), fn)
        for package, name in KNOWN_ERRORS:
            fn = error_methods.get((package, name))
            if fn is None:
                continue
            for sig in method_signatures(img, info, fn):
                try:
                    layout = memory.error_layout(sig.concrete)
                except (BinaryError, gotypes.TypeDecodeError, ValueError):
                    continue
                for off, kind in ([layout.message] if layout.message else []) + list(
                        layout.extra.values()):
                    if kind in decoders.SLOT_KINDS and off not in slots:
                        slots[off] = decoders.SLOT_KINDS[kind]
    finally:
        img.close()
    return tuple(sorted(slots.items()))

"""What DWARF says about a Rust poll function: where its future keeps `__state`, and how to
tell Pending/Ready and Ok/Err in the bytes it returns.

Only the compile unit holding the function is read (found through .debug_aranges, else by
its range), so a debug build of any size costs a fraction of a second. Rust describes an
enum as a struct with a `DW_TAG_variant_part`: its discriminant member (`DW_AT_discr`) and
one `DW_TAG_variant` per variant, with `DW_AT_discr_value` (niche values included) or none
for the variant that takes every other value.
"""

from __future__ import annotations

from elftools.elf.elffile import ELFFile

# Variant names of the poll's return type: std's Poll, and the generator state older
# rustc (before 1.68: async bodies as generators behind GenFuture) returns.
READY = ("Ready", "Complete")
PENDING = ("Pending", "Yielded")


def poll_layout(path: str, entry: int) -> tuple[tuple[int, int] | None, dict | None, int] | None:
    """((state offset, size) or None, result layout or None, size of the returned value), or
    None when the function has no DWARF."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                return None
            dwarf = elf.get_dwarf_info()
            sub = _subprogram(dwarf, entry)
            if sub is None:
                return None
            return _state(sub), _result(sub), _size(_type(sub)) or 0
    except Exception:  # noqa: BLE001 - a DWARF we cannot read leaves the other ways
        return None


def _subprogram(dwarf, entry: int):
    cus = []
    try:
        offset = dwarf.get_aranges().cu_offset_at_addr(entry) if dwarf.get_aranges() else None
        if offset is not None:
            cus = [dwarf.get_CU_at(offset)]
    except Exception:  # noqa: BLE001
        cus = []
    for cu in cus or dwarf.iter_CUs():
        for die in cu.iter_DIEs():
            low = die.attributes.get("DW_AT_low_pc")
            if die.tag == "DW_TAG_subprogram" and low is not None and low.value == entry:
                return die
    return None


def _type(die):
    return die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None


def _name(die) -> str | None:
    attr = die.attributes.get("DW_AT_name") if die is not None else None
    return attr.value.decode("utf-8", "replace") if attr else None


def _size(die) -> int | None:
    while die is not None and "DW_AT_byte_size" not in die.attributes:
        die = _type(die)  # typedefs, const
    return die.attributes["DW_AT_byte_size"].value if die is not None else None


def _offset(die) -> int:
    attr = die.attributes.get("DW_AT_data_member_location")
    return attr.value if attr is not None and isinstance(attr.value, int) else 0


def _member(die, name: str):
    return next((c for c in die.iter_children()
                 if c.tag == "DW_TAG_member" and _name(c) == name), None)


def _state(sub) -> tuple[int, int] | None:
    """`self: Pin<&mut Env>` -> Env's variant part -> its discriminant, `__state`."""
    param = next((c for c in sub.iter_children() if c.tag == "DW_TAG_formal_parameter"), None)
    pin = _type(param) if param is not None else None
    pointer = _member(pin, "pointer") or _member(pin, "__pointer") if pin is not None else None
    env = _type(_type(pointer)) if pointer is not None and _type(pointer) is not None else None
    if env is None:
        return None
    enum = _enum(env, 0)
    if enum is None or enum["name"] != "__state":
        return None
    return enum["off"], enum["size"]


def _enum(die, base: int) -> dict | None:
    """{"off", "size", "values": {value: variant}, "default": variant, "name": discriminant,
    "payload": {variant: (offset, type DIE)}} of an enum type at `base`, or None."""
    part = next((c for c in die.iter_children() if c.tag == "DW_TAG_variant_part"), None)
    if part is None or "DW_AT_discr" not in part.attributes:
        return None
    discr = part.get_DIE_from_attribute("DW_AT_discr")
    size = _size(_type(discr)) or 0
    enum = {"off": base + _offset(discr), "size": size, "values": {}, "default": None,
            "name": _name(discr), "payload": {}, "bodies": {}}
    for variant in part.iter_children():
        if variant.tag != "DW_TAG_variant":
            continue
        member = next((c for c in variant.iter_children() if c.tag == "DW_TAG_member"), None)
        if member is None:
            continue
        name = _name(member)
        value = variant.attributes.get("DW_AT_discr_value")
        if value is None:
            enum["default"] = name
        else:
            enum["values"][str(value.value & ((1 << (8 * size)) - 1))] = name
        body = _type(member)
        if body is not None:
            enum["bodies"][name] = (base + _offset(member), body)
        inner = _member(body, "__0") if body is not None else None
        if inner is not None:
            enum["payload"][name] = (base + _offset(member) + _offset(inner), _type(inner))
    return enum


def _plain(enum: dict) -> dict:
    return {k: enum[k] for k in ("off", "size", "values", "default")}


def _full_name(die) -> str | None:
    parts = []
    while die is not None and die.tag != "DW_TAG_compile_unit":
        name = _name(die)
        if name:
            parts.append(name)
        die = die.get_parent()
    return "::".join(reversed(parts)) or None


def _result(sub) -> dict | None:
    """How to read the poll's return: {"poll", "result", "error" (enum layouts), "error_type",
    "read" (bytes needed)}; None unless it returns Poll<Result<T, E>>."""
    ret = _type(sub)
    poll = _enum(ret, 0) if ret is not None else None
    if poll is None:
        return None
    ready = next((v for v in (poll["default"], *poll["values"].values()) if v in READY), None)
    if ready is None or ready not in poll["payload"]:
        return None
    offset, inner = poll["payload"][ready]
    result = _enum(inner, offset) if inner is not None else None
    if result is None or {"Ok", "Err"} - {result["default"], *result["values"].values()}:
        return None
    layout = {"poll": _plain(poll), "ready": ready, "result": _plain(result), "error": None,
              "error_type": None, "messages": {}, "requeue": None}
    if "Err" in result["payload"]:
        err_offset, err_type = result["payload"]["Err"]
        layout["error_type"] = _full_name(err_type)
        error = _enum(err_type, err_offset) if err_type is not None else None
        if error is not None:
            layout["error"] = _plain(error)
        # A message is what the error's Display prints, or none: that is known only of an
        # error that is itself a String or &str (Display prints it unchanged). An enum's or
        # a struct's Display is code of its own (thiserror's `#[error("...")]` formats its
        # fields), so a field of it is not the message.
        parts = _string_parts(err_type) if error is None else None
        if parts is not None:
            layout["messages"][""] = [err_offset + parts[0], err_offset + parts[1]]
    if "Ok" in result["payload"]:
        layout["requeue"] = _requeue(*result["payload"]["Ok"])
    ends = [e["off"] + e["size"] for e in (layout["poll"], layout["result"], layout["error"])
            if e]
    if layout["requeue"] is not None:
        ends += [layout["requeue"]["secs"] + 8, layout["requeue"]["nanos"] + 4]
    layout["read"] = max(ends)
    return layout


def _requeue(offset: int, die) -> dict | None:
    """kube-runtime's Action (`requeue_after: Option<Duration>`), the Ok of a reconcile:
    {"option": the Option's discriminant, "secs", "nanos": offsets in the returned value}."""
    die = _strip(die)
    if die is None or die.tag != "DW_TAG_structure_type" or _name(die) != "Action":
        return None
    member = _member(die, "requeue_after")
    option = _enum(_type(member), offset + _offset(member)) if member is not None else None
    if option is None or {option["default"], *option["values"].values()} != {"None", "Some"} \
            or "Some" not in option["payload"]:
        return None
    at, duration = option["payload"]["Some"]
    duration = _strip(duration)
    secs = _member(duration, "secs") if duration is not None else None
    nanos = _member(duration, "nanos") if duration is not None else None
    if secs is None or nanos is None or _size(_type(secs)) != 8 or _size(_type(nanos)) != 4:
        return None
    return {"option": _plain(option), "secs": at + _offset(secs), "nanos": at + _offset(nanos)}


# -- the reconciled object: namespace and name, read at a future's first poll --------------

MAX_DEPTH = 8


def request_layout(path: str, entry: int) -> dict | None:
    """How to read the object a reconcile future was made for, from the future at its first
    poll: {"namespace": steps, "name": steps}, or None. The arguments of an async fn are kept
    in the future's Unresumed variant; the first one that leads (through references, Arc,
    Box and struct fields) to a struct with `name` and `namespace` strings (kube-rs:
    `obj.metadata`, `Option<String>`s) is the object. Steps: ["o", n] add n, ["d"] follow a
    pointer, ["s", ptr, len, option or null] read a string (ptr and len offsets; option:
    the Option's discriminant, the string is read only when it is Some)."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            if not elf.has_dwarf_info():
                return None
            sub = _subprogram(elf.get_dwarf_info(), entry)
            env = _env(sub) if sub is not None else None
            unresumed = next((c for c in env.iter_children()
                              if c.tag == "DW_TAG_structure_type"
                              and _name(c) == "Unresumed"), None) if env is not None else None
            if unresumed is None:
                return None
            for member in unresumed.iter_children():
                if member.tag == "DW_TAG_member":
                    found = _object(_type(member), [["o", _offset(member)]], 0)
                    if found is not None:
                        return found
    except Exception:  # noqa: BLE001 - a DWARF we cannot read: no request, the span still is
        return None
    return None


def _env(sub):
    """The future's own type, from `self: Pin<&mut Env>` (the parameter named self)."""
    params = [c for c in sub.iter_children() if c.tag == "DW_TAG_formal_parameter"]
    for param in params:
        pin = _type(param)
        pointer = _member(pin, "pointer") or _member(pin, "__pointer") if pin is not None \
            else None
        if pointer is not None and _type(pointer) is not None:
            return _type(_type(pointer))
    return None


def _strip(die):
    while die is not None and die.tag in ("DW_TAG_typedef", "DW_TAG_const_type",
                                          "DW_TAG_volatile_type"):
        die = _type(die)
    return die


def _members(die):
    return [c for c in die.iter_children() if c.tag == "DW_TAG_member"]


def _object(die, steps: list, depth: int) -> dict | None:
    die = _strip(die)
    if die is None or depth > MAX_DEPTH:
        return None
    if die.tag in ("DW_TAG_pointer_type", "DW_TAG_reference_type"):
        return _object(_type(die), [*steps, ["d"]], depth + 1)
    if die.tag != "DW_TAG_structure_type":
        return None
    members = {_name(m): m for m in _members(die)}
    if "name" in members and "namespace" in members:
        fields = {}
        for field in ("namespace", "name"):
            read = _string(_type(members[field]))
            if read is None:
                return None
            fields[field] = [*steps, ["o", _offset(members[field])], read]
        return fields
    for member in members.values():
        found = _object(_type(member), [*steps, ["o", _offset(member)]], depth + 1)
        if found is not None:
            return found
    return None


def _string(die) -> list | None:
    """["s", ptr offset, len offset, option] for String, &str and Option<String>."""
    die = _strip(die)
    if die is None or die.tag != "DW_TAG_structure_type":
        return None
    option = _enum(die, 0)
    if option is not None:
        names = {option["default"], *option["values"].values()}
        if names != {"None", "Some"} or "Some" not in option["payload"]:
            return None
        offset, inner = option["payload"]["Some"]
        parts = _string_parts(inner)
        if parts is None:
            return None
        return ["s", offset + parts[0], offset + parts[1], _plain(option)]
    parts = _string_parts(die)
    return None if parts is None else ["s", parts[0], parts[1], None]


def _string_parts(die) -> tuple[int, int] | None:
    """(offset of the data pointer, offset of the length) in String (vec.buf...ptr, vec.len)
    or &str (data_ptr, length)."""
    die = _strip(die)
    name = _name(die) or ""
    if name not in ("String", "&str"):
        return None
    length = pointer = None

    def walk(d, base: int, depth: int) -> None:
        nonlocal length, pointer
        d = _strip(d)
        if d is None or depth > MAX_DEPTH:
            return
        if d.tag == "DW_TAG_pointer_type":
            if pointer is None:
                pointer = base
            return
        if d.tag != "DW_TAG_structure_type":
            return
        for m in _members(d):
            if _name(m) in ("len", "length") and length is None and \
                    _strip(_type(m)).tag == "DW_TAG_base_type":
                length = base + _offset(m)
            else:
                walk(_type(m), base + _offset(m), depth + 1)

    walk(die, 0, 0)
    return None if length is None or pointer is None else (pointer, length)

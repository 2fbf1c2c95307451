"""Rust async functions: one span per future, from its first poll to the poll that completes
it or to its drop, keyed by the future's address.

The seam with the probe files: `tracer.probes.compile` hands every `kind = "rust-async"`
function of a probe to `compile_async(info, spec, plan)`, which appends the plan's points
(key "future") and returns the names of the functions it instruments; the synchronous
pairer hands hits keyed by "future" to the async pairer (tracer.session.async_pairing).
"""

from __future__ import annotations

from tracer.binary.model import BinaryInfo
from tracer.errors import UserError
from tracer.probes.plan import Plan
from tracer.probes.spec import FunctionSpec


def matching_functions(info: BinaryInfo, spec: FunctionSpec) -> list[str]:
    """Names `tracer probes check` reports: the poll functions and the drop markers."""
    poll = spec.poll or spec.match
    names = [f.name for f in info.functions
             if poll.search(f.name) and not (spec.exclude and spec.exclude.search(f.name))]
    if spec.drop is not None:
        names += [f.name for f in info.functions if spec.drop.search(f.name)]
    return names


def compile_async(info: BinaryInfo, spec: FunctionSpec, plan: Plan) -> list[str]:
    raise UserError("Rust async functions (kind = \"rust-async\") are not yet supported: "
                    "trace the poll function as a plain call with --symbol REGEX")

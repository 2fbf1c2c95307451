"""What one span means, the same way in every export and plot: its object, worker, outcome."""

from __future__ import annotations

# Outcomes, most telling first: a span gets the first that applies. controller-runtime
# ignores the Result when the error is not nil, so an error outranks a requeue.
KINDS: tuple[str, ...] = ("unfinished", "panic", "error", "requeue-after", "requeue", "ok")


def object_name(span: dict) -> str | None:
    """`namespace/name` of the reconciled object (just `name` if cluster-scoped), or None."""
    request = span.get("request")
    if not request:
        return None
    namespace, name = request.get("namespace"), request.get("name")
    if name is None:
        return None
    return f"{namespace}/{name}" if namespace else str(name)


def worker_name(span: dict) -> str:
    """Go calls are paired per goroutine, so that is the worker; native calls run on threads."""
    if span.get("goroutine") is not None:
        return f"goroutine {span['goroutine']}"
    return f"thread {span.get('thread')}"


def requeue_after_ns(span: dict) -> int:
    return int((span.get("result") or {}).get("requeue_after_ns") or 0)


def requeue(span: dict) -> bool:
    return bool((span.get("result") or {}).get("requeue"))


def marks(span: dict) -> list[str]:
    """Every notable thing about a span (a span can both fail and ask for a requeue)."""
    found = []
    if span.get("end_ns") is None:
        found.append("unfinished")
    if span.get("panic"):
        found.append("panic")
    if span.get("error"):
        found.append("error")
    if requeue_after_ns(span):
        found.append("requeue-after")
    if requeue(span):
        found.append("requeue")
    return found


def kind(span: dict) -> str:
    """The one outcome a span is coloured by: the first of KINDS that applies."""
    found = marks(span)
    return next((k for k in KINDS if k in found), "ok")


def short_function(name: str) -> str:
    """`controllers.(*R).Reconcile` from `example.com/op/controllers.(*R).Reconcile`."""
    return name.rsplit("/", 1)[-1]

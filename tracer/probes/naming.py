"""What a reconcile function's name says: the kind of object its receiver is named after.

Both the watch of a live run (kube/watch.py: which resources to watch by default) and the
report (analysis/causes.py: which controller an event triggers) read it from here."""

from __future__ import annotations

import re

_RECEIVER = re.compile(r"\(\*?([A-Za-z0-9_]+?)(?:Reconciler|Controller)?\)\.[A-Za-z0-9_]+$")


def receiver_kind(function: str | None) -> str | None:
    """`pkg.(*MemcachedReconciler).Reconcile` -> `memcached`: how events find their function."""
    match = _RECEIVER.search(function or "")
    return match.group(1).lower() if match else None

"""Fixed tags a run adds to its header and to every span (where the process runs: pod,
namespace, container, node, container id), in one place for local and remote runs."""

from __future__ import annotations


def tag_span(span: dict, tags: dict | None) -> dict:
    """Add the run's tags to a span, in place (spans are written once, right after); a key the
    span already has is the span's own and stays."""
    if tags:
        for key, value in tags.items():
            span.setdefault(key, value)
    return span

"""Watch events of Kubernetes objects, written into the trace beside the spans.

Each ADDED, MODIFIED or DELETED seen while tracing becomes an `event` line stamped with
CLOCK_MONOTONIC when it arrived, so `tracer report` can tie a reconcile to the change that
caused it and measure the delay. Only changes made during the run are recorded: the watch
starts from the resourceVersion of a list taken first, not from a replay of every object.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from tracer.errors import UserError
from tracer.kube.client import Connection, api_error
from tracer.probes.naming import receiver_kind

# The server ends each watch after this long; it bounds how late a stop is seen.
WATCH_SECONDS = 2


def find_resource(conn: Connection, name: str):
    """A resource by plural, singular, short name or kind (`configmaps`, `cm`, `Sample`,
    `samples.example.com`), as kubectl takes it."""
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    try:
        dyn = DynamicClient(conn.api)
    except Exception as exc:  # noqa: BLE001 - discovery failing is one line for the user
        raise api_error(exc, "discover", "API resources", None) from None
    plural, _, group = name.partition(".")
    candidates = []
    for field in ("name", "singular_name", "short_names", "kind"):
        query = {field: plural if field != "short_names" else [plural]}
        if group:
            query["group"] = group
        try:
            candidates = [r for r in dyn.resources.search(**query)
                          if "watch" in (getattr(r, "verbs", None) or []) and
                          "/" not in r.name]
        except ResourceNotFoundError:
            candidates = []
        if not candidates and field == "kind":
            candidates = [r for r in dyn.resources.search()
                          if getattr(r, "kind", "").lower() == plural.lower()
                          and "/" not in getattr(r, "name", "/")]
        if candidates:
            break
    if not candidates:
        raise UserError(f"--watch {name}: the API server has no such resource (try "
                        "`kubectl api-resources`)")
    # The preferred version of the group first, as kubectl does.
    preferred = [r for r in candidates if getattr(r, "preferred", False)]
    return dyn, (preferred or candidates)[0]


def kinds_of(functions: list[str]) -> list[str]:
    """The kinds a controller-runtime operator's reconcilers are named after:
    `(*MemcachedReconciler).Reconcile` reconciles Memcached."""
    kinds = []
    for function in functions:
        kind = receiver_kind(function)
        if kind and kind not in kinds:
            kinds.append(kind)
    return kinds


class Watcher:
    """One thread per watched resource; `write` gets each event line.

    Objects are watched in every namespace (operators often reconcile across the cluster);
    an account that may not list them cluster-wide is watched in `namespace` instead."""

    def __init__(self, conn: Connection, names: list[str], namespace: str,
                 skip_missing: bool = False) -> None:
        self.conn = conn
        self.namespace = namespace
        self.resources = []
        self.missing: list[str] = []
        for name in names:
            try:
                self.resources.append(find_resource(conn, name))
            except UserError:
                if not skip_missing:
                    raise
                self.missing.append(name)
        self.write: Callable[[dict], None] = lambda line: None
        self.on_status: Callable[[str], None] = lambda message: None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.events = 0

    def start(self, write: Callable[[dict], None], on_status: Callable[[str], None]) -> None:
        self.write, self.on_status = write, on_status
        # Every list comes first, before any thread: a missing right is said before tracing.
        starts = [self._list_version(dyn, res) for dyn, res in self.resources]
        for (dyn, res), (scope, version) in zip(self.resources, starts, strict=True):
            thread = threading.Thread(target=self._run, args=(dyn, res, scope, version),
                                      name=f"watch-{res.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()

    def describe(self) -> list[str]:
        return [f"{res.name}.{res.group}" if res.group else res.name
                for _, res in self.resources]

    def _list_version(self, dyn, res) -> tuple[str | None, str]:
        scopes = [None, self.namespace] if res.namespaced else [None]
        for scope in scopes:
            try:
                listed = dyn.get(res, namespace=scope)
                return scope, listed.metadata.resourceVersion
            except Exception as exc:  # noqa: BLE001 - ApiException or connection: one line
                if getattr(exc, "status", None) == 403 and scope is None and res.namespaced:
                    continue
                raise api_error(exc, "list", res.name, scope) from None
        raise AssertionError("unreachable")

    def _run(self, dyn, res, scope: str | None, version: str) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        path = res.path(namespace=scope)
        while not self._stop.is_set():
            try:
                # Raw lines, stamped as they arrive: decoding first would date each event a
                # few milliseconds late, after the operator has often started on it.
                resp = dyn.request("get", path, watch=True, resource_version=version,
                                   timeout_seconds=WATCH_SECONDS, allow_watch_bookmarks=True,
                                   serialize=False)
                for line in iter_resp_lines(resp):
                    ts = time.monotonic_ns()
                    if self._stop.is_set():
                        resp.close()
                        return
                    if line:
                        version = self._record(res, ts, json.loads(line)) or version
            except Exception as exc:  # noqa: BLE001 - a lost watch is said, tracing goes on
                if getattr(exc, "status", None) == 410:  # too old: start again from now
                    try:
                        scope, version = self._list_version(dyn, res)
                        continue
                    except UserError as again:
                        exc = again
                if not self._stop.is_set():
                    self.on_status(f"warning: watching {res.name} stopped: {exc}")
                return

    def _record(self, res, ts: int, event: dict) -> str | None:
        kind = event.get("type")
        raw = event.get("object") or {}
        meta = raw.get("metadata") or {}
        if kind == "ERROR":  # the server's way to end a watch, e.g. 410 Gone
            if raw.get("code") == 410:
                raise _Expired()
            raise UserError(raw.get("message") or "watch error")
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return meta.get("resourceVersion")  # BOOKMARK: only moves the version on
        self.events += 1
        self.write({
            "type": "event",
            "ts_ns": ts,
            "event": kind,
            "kind": raw.get("kind") or res.kind,
            "api_version": raw.get("apiVersion") or res.group_version,
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "uid": meta.get("uid"),
            "resource_version": meta.get("resourceVersion"),
            "generation": meta.get("generation"),
            # controller-runtime's Owns(): a change of an owned object queues its owner.
            "owner": _controller_owner(meta),
        })
        return meta.get("resourceVersion")


def _controller_owner(meta: dict) -> dict | None:
    """The owner reference marked controller: {"kind", "name"} (same namespace), or None."""
    for ref in meta.get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller"):
            return {"kind": ref.get("kind"), "name": ref.get("name")}
    return None


class _Expired(Exception):
    """The watch's resourceVersion is too old (HTTP 410 in an ERROR event)."""

    status = 410

"""`tracer attach -l SELECTOR`: every matching pod traced at once, into one file.

Each pod's process is traced by its own `tracer agent` (one debugger per process, as always),
started here or next to the pod (--agent); their streams are received side by side and merged
(tracer/remote/merge.py).
One Ctrl-C, SIGTERM or --duration stops them all, and each detaches on its own.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from tracer.errors import UserError
from tracer.kube.pods import PodTarget
from tracer.remote.merge import MergedTrace
from tracer.remote.receiver import Receiver, Stream
from tracer.session.session import Outcome


class MultiRun:
    """Answers what the display asks of a run (run, request_stop, header, on_span, writer)."""

    def __init__(self, sources: list[tuple[PodTarget, Stream, dict]], output: str,
                 duration: float | None, on_status: Callable[[str], None],
                 on_header: Callable[[dict], None] | None = None) -> None:
        """`sources`: each pod with the stream of its agent and what to record of its way;
        `on_header` gets each agent's header before it is written."""
        self.pods = [pod for pod, _, _ in sources]
        self.output = output
        self.on_status = on_status
        self.on_span: Callable[[dict], None] | None = None
        self.merged = MergedTrace(output, len(sources), on_error=self._write_failed)
        self.receivers: list[Receiver] = []
        self.failures: list[str] = []
        for index, (pod, stream, via) in enumerate(sources):
            self.receivers.append(Receiver(
                stream, output, via=via, tags={"k8s": pod.tags()}, duration=duration,
                on_span=self._span,
                on_status=lambda message, name=pod.pod: on_status(f"{name}: {message}"),
                open_writer=lambda path, on_error, index=index: self.merged.source(index),
                on_header=on_header))

    @property
    def header(self) -> dict | None:
        return self.merged.header

    @property
    def writer(self):
        return self.merged.writer

    def record(self, line: dict) -> None:
        self.merged.record(line)

    def _span(self, span: dict) -> None:
        if self.on_span is not None:
            self.on_span(span)

    def _write_failed(self, exc: OSError) -> None:
        self.on_status(f"error: cannot write the trace file ({exc.strerror}): stopping")
        self.request_stop("write-failed")

    def request_stop(self, reason: str) -> None:
        for receiver in self.receivers:
            receiver.request_stop(reason)

    def _run_one(self, index: int, outcomes: list) -> None:
        receiver = self.receivers[index]
        try:
            outcomes[index] = receiver.run()
        except UserError as exc:
            self.failures.append(f"{self.pods[index].pod}: {exc}")
            self.merged.source_gone(index)
        except Exception as exc:  # noqa: BLE001 - one pod failing must not stop the others
            self.failures.append(f"{self.pods[index].pod}: {exc!r}")
            self.merged.source_gone(index)

    def run(self) -> Outcome:
        outcomes: list[Outcome | None] = [None] * len(self.receivers)
        threads = [threading.Thread(target=self._run_one, args=(i, outcomes),
                                    name=f"receive-{pod.pod}", daemon=True)
                   for i, pod in enumerate(self.pods)]
        previous = {sig: signal.signal(sig, lambda signum, _f: self.request_stop(
            signal.Signals(signum).name)) for sig in (signal.SIGINT, signal.SIGTERM,
                                                      signal.SIGHUP)}
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.merged.close()
        for failure in self.failures:
            self.on_status(f"error: {failure}")
        done = [o for o in outcomes if o is not None]
        if not done:
            raise UserError("no pod could be traced: " + "; ".join(self.failures))
        restored = [o.code_restored for o in done]
        return Outcome(
            done[0].reason if len(done) == len(outcomes) else "error",
            sum(o.spans for o in done),
            sum(o.unfinished or 0 for o in done),
            self.output,
            "; ".join(f"{pod.pod} {o.target_status}" for pod, o
                      in zip(self.pods, outcomes, strict=True) if o and o.target_status),
            None if None in restored else all(restored))

    def totals(self) -> dict[str, int]:
        """Hits and handler time of every agent so far (for the live screen's cost line)."""
        return {key: sum(r.stats.get(key, 0) for r in self.receivers)
                for key in ("hits", "handler_ns")}

    def in_flight(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for receiver in self.receivers:
            for function, count in receiver.stats.get("in_flight", {}).items():
                total[function] = total.get(function, 0) + count
        return total

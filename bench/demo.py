"""scripts/demo's last lines: what the trace file holds, in one sentence.

    python -m bench.demo TRACE
"""

import collections
import sys

from tracer.session.tracefile import read_trace


def main(argv: list[str] | None = None) -> None:
    path = (sys.argv[1:] if argv is None else argv)[0]
    trace = read_trace(path)
    status = collections.Counter(s["status"] for s in trace.spans)
    objects = len({(s["request"]["namespace"], s["request"]["name"]) for s in trace.spans})
    print(f"demo: {len(trace.spans)} reconciles of {objects} objects: "
          + ", ".join(f"{n} {k}" for k, n in status.most_common()))
    print(f"demo: run ended by {trace.end['reason']}; breakpoints removed and code checked: "
          f"{trace.end['code_restored']}")


if __name__ == "__main__":
    main()

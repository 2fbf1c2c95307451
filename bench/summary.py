"""Every benchmark's results in one file: build/bench.json holds the machine it ran on and
what each benchmark wrote (build/bench-backends.json, bench-live.json, bench-report.json, and
bench-real.json and bench-kube-rs.json when scripts/bench-real and bench-kube-rs ran).

    python -m bench.summary
"""

import json
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ("bench-backends", "bench-live", "bench-report", "bench-real", "bench-kube-rs",
           "bench-node")
OPTIONAL = ("bench-real", "bench-kube-rs", "bench-node")


def machine() -> dict:
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "load_1min": os.getloadavg()[0],
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                / 2**30)}


def main() -> None:
    build = ROOT / "build"
    results: dict = {"machine": machine()}
    for name in BENCHES:
        path = build / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
        elif name not in OPTIONAL:
            results[name] = None
    (build / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
          f"Linux {m['kernel']}")
    print("written build/bench.json")


if __name__ == "__main__":
    main()

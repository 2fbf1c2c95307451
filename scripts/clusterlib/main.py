"""The command line of scripts/cluster: up, down, run-operator."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
from pathlib import Path

from tracer.terminal import visible

from . import node, operator
from .api import ApiError
from .files import Layout


def default_dir() -> Path:
    return Path(os.environ.get("TRACER_CLUSTER_DIR") or node.CACHE / "cluster")


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, as the project's commands do
        print(f"cluster: {visible(message)}", file=sys.stderr)
        sys.exit(2)


def _parse(argv: list[str]) -> argparse.Namespace:
    p = Parser(prog="scripts/cluster", description="A one-node Kubernetes cluster on this "
               "machine: etcd, kube-apiserver, containerd + runc, a CNI bridge, the kubelet.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, text in (("up", "start the cluster; prints export KUBECONFIG=..."),
                       ("down", "stop everything and remove what up made")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--dir", type=Path, default=None,
                       help="the cluster's directory (default $TRACER_CLUSTER_DIR or "
                            "$TRACER_CACHE/cluster)")
    r = sub.add_parser(
        "run-operator", help="run an operator binary as Pod NAME; wait for Running",
        description="Run BINARY as Pod NAME, from an image written and imported on the spot. "
        "The image holds /operator (the binary) and nothing else for a static binary; for a "
        "dynamically linked one (e.g. Rust or cgo on glibc), as a distroless/cc image would, "
        "also its ELF interpreter and the shared libraries it loads, resolved on this machine "
        "(ldd) and put at the paths they have here. No shell, no /etc, no CA certificates.")
    r.add_argument("--dir", type=Path, default=None)
    r.add_argument("--env", action="append", default=[], metavar="K=V")
    r.add_argument("--mount", action="append", default=[], metavar="HOSTPATH:PODPATH")
    r.add_argument("--user", type=int, default=None, metavar="UID",
                   help="run as this UID (and GID); default: the image's (root)")
    r.add_argument("--namespace", default="default")
    r.add_argument("--timeout", type=float, default=90)
    r.add_argument("name")
    r.add_argument("binary", type=Path)
    r.add_argument("args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.command == "run-operator":
        for flag, items in (("--env", args.env), ("--mount", args.mount)):
            sep = "=" if flag == "--env" else ":"
            for item in items:
                if sep not in item or not item.split(sep, 1)[0]:
                    p.error(f"{flag} {item!r}: expected {'K=V' if sep == '=' else 'HOST:POD'}")
        if args.args and args.args[0] == "--":
            args.args = args.args[1:]
    return args


def _locked(lay: Layout):
    lay.root.mkdir(parents=True, exist_ok=True)
    f = open(lay.root / ".lock", "a")
    # up and down on one directory never overlap (a test's teardown and a user's Ctrl-C).
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def _say(text: object) -> None:
    """One message on stderr; its text may come from outside (a pod's termination message, the
    kubelet's events, the API server, a daemon's log): every control character made visible.
    Lines stay lines (a daemon log's tail); a message from outside is one line already."""
    print("cluster: " + "\n".join(visible(line) for line in str(text).split("\n")),
          file=sys.stderr)


def _stopped(lay: Layout) -> None:
    for p in node.down(lay):
        _say(f"down: {p}")


def main(argv: list[str]) -> int:
    args = _parse(argv)
    lay = Layout(args.dir or default_dir())
    try:
        if args.command == "up":
            # The machine first, then whether DIR may be used: DIR is not touched until both hold.
            node.check_host()
            node.check_dir(lay)
            with _locked(lay):
                node.check_dir(lay)  # what another `up` may have made meanwhile is a cluster's
                node.claim(lay)
                if node.is_up(lay):
                    print(f"cluster: already up in {lay.root}", file=sys.stderr)
                    print(f"export KUBECONFIG={lay.admin_kubeconfig}")
                    return 0
                if node.read_state(lay) is not None:  # a crashed or half-stopped cluster
                    _stopped(lay)
                try:
                    seconds = node.up(lay)
                except BaseException:
                    print("cluster: up failed; stopping what it started", file=sys.stderr)
                    _stopped(lay)
                    raise
            print(f"cluster: up in {seconds:.1f} s (node {node.NODE}, Kubernetes "
                  f"{node.KUBE_VERSION}, pids in {lay.pids})", file=sys.stderr)
            print(f"export KUBECONFIG={lay.admin_kubeconfig}")
        elif args.command == "down":
            if not lay.root.exists():
                return 0  # nothing was ever made there
            node.check_dir(lay)
            with _locked(lay):
                problems = node.down(lay)
            for p in problems:
                _say(f"down: {p}")
            return 1 if problems else 0
        else:
            env = dict(e.split("=", 1) for e in args.env)
            mounts = dict(m.split(":", 1) for m in args.mount)
            pod = operator.run_operator(lay, args.name, args.binary.resolve(), args.args, env,
                                        mounts, args.user, args.namespace, args.timeout)
            cs = pod["status"]["containerStatuses"][0]
            print(json.dumps({"pod": args.name, "namespace": args.namespace,
                              "node": pod["spec"]["nodeName"], "image": cs["image"],
                              "containerID": cs.get("containerID"),
                              "podIP": pod["status"].get("podIP"),
                              "imageFiles": pod["imageFiles"]}))
    except (operator.BadInput, node.NotACluster) as exc:
        _say(exc)
        return 2
    except (node.ClusterError, operator.PodFailed, ApiError, OSError) as exc:
        _say(exc)
        return 1
    return 0

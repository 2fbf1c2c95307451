"""`scripts/cluster up` and `down`: etcd, kube-apiserver, containerd + runc, a CNI bridge and the
kubelet, on this machine, everything under DIR except what the kernel keeps elsewhere (a bridge,
a cgroup subtree, mounts), which `down` removes.

No scheduler and no controller-manager: pods are created with spec.nodeName set, and what the
missing controllers would make (the `default` ServiceAccount, the `kube-root-ca.crt`
ConfigMap) is made here once the API server is up.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import procs
from .api import Api, ApiError
from .files import Layout, write_atomic
from .pki import Pki, kubeconfig
from .procs import ClusterError

ROOT = Path(__file__).resolve().parent.parent.parent
CACHE = Path(os.environ.get("TRACER_CACHE", Path.home() / ".cache" / "tracer"))
KUBE_VERSION = os.environ.get("TRACER_KUBERNETES_VERSION", "1.37.2")
CNI_BIN = Path("/usr/lib/cni")
NODE = "tracer-node"
PAUSE_REF = "localhost/tracer-pause:3.10"
CGROUP_FS = Path("/sys/fs/cgroup")
# Daemons in the order `up` starts them; `down` stops them in reverse.
DAEMONS = ("etcd", "kube-apiserver", "containerd", "kubelet")
NAMESPACES_WITH_CA = ("default", "kube-system", "kube-public")


class NotACluster(ClusterError):
    """Exit code 2: DIR holds things and no cluster; `up` and `down` leave it untouched."""


def kube_binary(name: str) -> Path:
    return CACHE / f"kubernetes-{KUBE_VERSION}" / name


def _need(paths: dict[str, Path | str | None]) -> None:
    missing = [what for what, p in paths.items() if not p or not os.access(p, os.X_OK)]
    if missing:
        raise ClusterError(f"missing {', '.join(missing)}: run scripts/setup "
                           "(apt packages etcd-server containerd runc containernetworking-plugins;"
                           " scripts/build-kubernetes)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(lay: Layout, name: str, lines: int = 15) -> str:
    try:
        text = (lay.logs / f"{name}.log").read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def _wait(lay: Layout, name: str, what: str, ready, timeout: float) -> None:
    """Poll READY until true; fail at once with the log's tail if the daemon NAME has died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except (OSError, ApiError, ValueError, ssl.SSLError):
            pass
        if name and not procs.running(lay.pids, name):
            raise ClusterError(f"{name} exited before {what}; the end of "
                               f"{lay.logs / (name + '.log')}:\n{_log_tail(lay, name)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"{what}: not after {timeout:.0f} s; the end of "
                               f"{lay.logs / (name + '.log')}:\n{_log_tail(lay, name)}")
        time.sleep(0.2)


def _run(argv: list[str], what: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ClusterError(f"{what}: {' '.join(argv)}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


# --- the network -------------------------------------------------------------------------------

def _pick_subnet() -> int:
    """A 10.201.N.0/24 that no route and no other cluster's bridge on this machine uses."""
    used = json.loads(_run(["ip", "-j", "route", "show", "table", "all"], "listing routes"))
    links = {link["ifname"] for link in json.loads(_run(["ip", "-j", "link"], "listing links"))}
    taken = set()
    for r in used:
        try:
            net = ipaddress.ip_network(r.get("dst", ""), strict=False)
        except ValueError:
            continue
        if net.version == 4 and net.overlaps(ipaddress.ip_network("10.201.0.0/16")):
            taken.add(int(net.network_address.packed[2]))
    for n in range(1, 255):
        if n not in taken and f"trc{n}" not in links:
            return n
    raise ClusterError("no free 10.201.N.0/24 subnet for the pod bridge")


def _make_bridge(state: dict) -> None:
    bridge, gw = state["bridge"], state["gateway"]
    _run(["ip", "link", "add", bridge, "type", "bridge"], "creating the pod bridge")
    _run(["ip", "addr", "add", f"{gw}/24", "dev", bridge], "addressing the pod bridge")
    # Up with no port yet: the gateway address stays local (the API server listens on it).
    _run(["ip", "link", "set", bridge, "up"], "bringing the pod bridge up")


def _cni_config(lay: Layout, state: dict) -> None:
    conf = {
        "cniVersion": "1.0.0", "name": "tracer-pods",
        "plugins": [
            {"type": "bridge", "bridge": state["bridge"], "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(lay.cni_ipam),
                      "ranges": [[{"subnet": state["subnet"], "gateway": state["gateway"]}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "loopback"},
        ],
    }
    write_atomic(lay.cni_conf / "10-tracer.conflist", json.dumps(conf, indent=1) + "\n")


# --- cgroups -----------------------------------------------------------------------------------

def _hierarchies(v2: bool = False) -> list[Path]:
    """The cgroup v1 hierarchies the kubelet and runc make pod cgroups in, and with V2 the
    hybrid layout's cgroup2 one (runc mirrors each container's cgroup there). [] on a host
    with cgroup v2 alone (/sys/fs/cgroup itself the cgroup2 mount): `up` refuses it."""
    if not CGROUP_FS.is_dir():
        return []
    return sorted(p for p in CGROUP_FS.iterdir()
                  if p.is_dir() and (v2 or p.name != "unified") and os.path.ismount(p))


def _make_cgroup_root(name: str) -> None:
    """The kubelet's cgroupRoot: each cluster's pods in a subtree of their own, removed by down."""
    for h in _hierarchies():
        d = h / name
        d.mkdir(exist_ok=True)
        if h.name == "cpuset":  # a cpuset cgroup takes no task until it has CPUs and memory nodes
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not (d / f).read_text().strip():
                    (d / f).write_text((h / f).read_text())


def _cgroup_processes(name: str) -> set[int]:
    """Every process in the cluster's cgroup subtree (the same set in each hierarchy)."""
    found: set[int] = set()
    for h in _hierarchies(v2=True):
        for dirpath, _dirs, _files in os.walk(h / name):
            try:
                found.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
            except OSError:
                continue
    return found


def _remove_cgroup_root(name: str) -> list[str]:
    """Kill what is left in the subtree (containers whose kubelet and containerd died), by PID,
    then remove it deepest first."""
    for _ in range(3):
        pids = _cgroup_processes(name)
        if not pids:
            break
        for pid in pids:
            procs.kill_pid(pid)
    left = []
    for h in _hierarchies(v2=True):
        top = h / name
        if not top.is_dir():
            continue
        errors = []
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError as exc:
                errors.append(exc.strerror)
        if errors:
            left.append(f"{top}: {errors[0]} ({len(errors)} cgroups left)")
    return left


# --- mounts ------------------------------------------------------------------------------------

def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ROOT, deepest first (octal escapes of mountinfo decoded)."""
    prefix = str(root)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(set(found), key=len, reverse=True)


def _unmount_all(root: Path) -> list[str]:
    for _ in range(5):  # a bind mount on itself (the kubelet's root) shows up once per layer
        points = mounts_under(root)
        if not points:
            return []
        for p in points:
            subprocess.run(["umount", "-l", p], capture_output=True)
    return mounts_under(root)


# --- the daemons -------------------------------------------------------------------------------

def _start_etcd(lay: Layout, st: dict) -> None:
    client, peer = f"http://127.0.0.1:{st['etcd_port']}", f"http://127.0.0.1:{st['etcd_peer_port']}"
    procs.start(lay.pids, lay.logs, "etcd", [
        shutil.which("etcd") or "etcd", "--name", "tracer", "--data-dir", str(lay.etcd),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"tracer={peer}", "--listen-metrics-urls", "",
        "--snapshot-count", "10000", "--quota-backend-bytes", str(2 << 30)])

    def healthy() -> bool:
        with urllib.request.urlopen(f"{client}/health", timeout=2) as r:
            return json.loads(r.read()).get("health") == "true"
    _wait(lay, "etcd", "etcd healthy", healthy, 30)


def _start_apiserver(lay: Layout, st: dict, pki: Pki, api: Api) -> None:
    sa_key, sa_pub = pki.service_account_keys()
    d = pki.dir
    procs.start(lay.pids, lay.logs, "kube-apiserver", [
        str(kube_binary("kube-apiserver")),
        f"--etcd-servers=http://127.0.0.1:{st['etcd_port']}",
        # All addresses: the host reaches it on 127.0.0.1, pods on the bridge's gateway.
        "--bind-address=0.0.0.0", f"--secure-port={st['apiserver_port']}",
        f"--advertise-address={st['gateway']}",
        f"--cert-dir={d / 'apiserver-generated'}",
        f"--tls-cert-file={d / 'apiserver.crt'}", f"--tls-private-key-file={d / 'apiserver.key'}",
        f"--client-ca-file={pki.ca_crt}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={sa_pub}", f"--service-account-signing-key-file={sa_key}",
        "--service-cluster-ip-range=10.202.0.0/24",
        "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=true", "--profiling=false",
        f"--kubelet-client-certificate={d / 'apiserver-kubelet.crt'}",
        f"--kubelet-client-key={d / 'apiserver-kubelet.key'}",
        f"--kubelet-certificate-authority={pki.ca_crt}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
    ])

    def ready() -> bool:
        api.request("GET", "/readyz", timeout=3)
        return True
    _wait(lay, "kube-apiserver", "kube-apiserver ready (/readyz)", ready, 90)


def _containerd_config(lay: Layout) -> Path:
    # Its own root, state, socket and CNI directories: never the system containerd's.
    c = lay.containerd
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    text = f"""version = 2
root = "{c / 'root'}"
state = "{c / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{lay.socket}"

[ttrpc]
  address = "{lay.socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{c / 'opt'}"

[{cri}]
  sandbox_image = "{PAUSE_REF}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # The pods' network namespaces are mounted under the state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  # Without CAP_SYS_RESOURCE (this sandbox withholds it) no process may lower its
  # oom_score_adj, and runc fails the pause container at the kubelet's -998 ("failed to update
  # /proc/self/oom_score_adj: Permission denied"); containerd then raises it to its own.
  restrict_oom_score_adj = {"true" if _lacks_sys_resource() else "false"}

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{shutil.which('runc') or '/usr/sbin/runc'}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{lay.cni_conf}"
"""
    path = c / "config.toml"
    write_atomic(path, text)
    return path


def _lacks_sys_resource() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return not int(line.split()[1], 16) & (1 << 24)  # CAP_SYS_RESOURCE
    return True


def ctr(lay: Layout, *args: str) -> list[str]:
    return ["ctr", "--address", str(lay.socket), "--namespace", "k8s.io", *args]


def _start_containerd(lay: Layout) -> None:
    config = _containerd_config(lay)
    procs.start(lay.pids, lay.logs, "containerd",
                [shutil.which("containerd") or "containerd", "--config", str(config)])

    def serving() -> bool:
        return subprocess.run(ctr(lay, "version"), capture_output=True, timeout=10).returncode == 0
    _wait(lay, "containerd", "containerd serving on its socket", serving, 30)


def import_image(lay: Layout, archive: Path) -> None:
    _run(ctr(lay, "images", "import", "--snapshotter", "overlayfs", str(archive)),
         f"importing {archive} into containerd")


def _kubelet_config(lay: Layout, st: dict) -> Path:
    d = lay.pki
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{st['cgroup_root']}",
        "cgroupsPerQOS": True, "enforceNodeAllocatable": ["pods"],
        # This machine has cgroup v1; kubelets >= 1.35 refuse it unless told this.
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{lay.socket}",
        "address": st["gateway"], "port": st["kubelet_port"], "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": st["kubelet_healthz_port"],
        "tlsCertFile": str(d / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(d / "kubelet-serving.key"),
        # The API server (exec, attach, logs) comes with a client certificate of our CA; what
        # it may do is asked back of the API server (SubjectAccessReview).
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(d / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "podLogsDir": str(lay.pod_logs),
        "volumePluginDir": str(lay.kubelet / "volume-plugins"),
        "staticPodPath": "",
        "resolvConf": "/etc/resolv.conf",
        # Operator images are imported, never pulled: garbage collection must not drop them.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "serializeImagePulls": False,
        "maxPods": 50,
        # KUBE-FIREWALL and the canary chains are for kube-proxy, which this cluster has not;
        # made, they would outlive `down` in the host's iptables.
        "makeIPTablesUtilChains": False,
    }
    path = lay.kubelet / "config.yaml"
    write_atomic(path, json.dumps(config, indent=1) + "\n")
    return path


def _start_kubelet(lay: Layout, st: dict, api: Api) -> None:
    config = _kubelet_config(lay, st)
    procs.start(lay.pids, lay.logs, "kubelet", [
        str(kube_binary("kubelet")), f"--config={config}",
        f"--kubeconfig={lay.kubelet / 'kubeconfig'}", f"--hostname-override={st['node']}",
        f"--node-ip={st['gateway']}", f"--root-dir={lay.kubelet / 'root'}",
        f"--cert-dir={lay.kubelet / 'pki'}", "--v=1",
    ])

    def node_ready() -> bool:
        node = api.get(f"/api/v1/nodes/{st['node']}")
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in node.get("status", {}).get("conditions", []))
    _wait(lay, "kubelet", f"node {st['node']} Ready", node_ready, 120)


def _missing_controllers(api: Api, pki: Pki) -> None:
    """What kube-controller-manager would have made: the ServiceAccount admission plugin
    refuses pods whose ServiceAccount does not exist; token volumes mount kube-root-ca.crt."""
    ca = pki.ca_crt.read_text()
    for ns in NAMESPACES_WITH_CA:
        api.create(f"/api/v1/namespaces/{ns}/serviceaccounts",
                   {"metadata": {"name": "default"}})
        api.create(f"/api/v1/namespaces/{ns}/configmaps",
                   {"metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": ca}})


# --- up and down -------------------------------------------------------------------------------

def admin_api(lay: Layout, st: dict) -> Api:
    return Api(f"https://127.0.0.1:{st['apiserver_port']}", lay.pki / "ca.crt",
               lay.pki / "admin.crt", lay.pki / "admin.key")


def read_state(lay: Layout) -> dict | None:
    try:
        return json.loads(lay.state.read_text())
    except (OSError, ValueError):
        return None


def is_up(lay: Layout) -> bool:
    return read_state(lay) is not None and all(procs.running(lay.pids, d) for d in DAEMONS)


def check_host() -> None:
    """What `up` needs of this machine, checked before DIR is touched."""
    _need({"etcd": shutil.which("etcd"), "containerd": shutil.which("containerd"),
           "runc": shutil.which("runc"), "ctr": shutil.which("ctr"),
           "kube-apiserver": kube_binary("kube-apiserver"), "kubelet": kube_binary("kubelet"),
           "CNI plugin bridge": CNI_BIN / "bridge", "CNI plugin host-local": CNI_BIN / "host-local",
           "CNI plugin loopback": CNI_BIN / "loopback"})
    if os.geteuid() != 0:
        raise ClusterError("the kubelet, containerd and the bridge need root: run as root")
    if not _hierarchies():
        raise ClusterError(f"no cgroup v1 hierarchy under {CGROUP_FS} (a cgroup v2-only host): "
                           "this cluster's kubelet and down need cgroup v1 (docs/cluster.md)")


def check_dir(lay: Layout) -> None:
    """Refuse (NotACluster) a DIR that holds anything but a cluster's files: `up` and `down`
    remove what `up` makes there, and nothing may be taken for that which is not."""
    try:
        entries = {e.name for e in lay.root.iterdir()}
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise NotACluster(f"{lay.root} is not a directory") from None
    if lay.marker.name in entries or lay.state.name in entries:
        return
    # What `down` of a version that wrote no marker left: logs/ of the daemons and .lock.
    logs = {e.name for e in lay.logs.iterdir()} if lay.logs.is_dir() else set()
    if entries <= {".lock", lay.logs.name} and logs <= {f"{d}.log" for d in DAEMONS}:
        return
    raise NotACluster(f"{lay.root} is not empty and holds no cluster (no {lay.marker.name} or "
                      f"{lay.state.name}): refusing to use it; give an empty or new --dir")


def claim(lay: Layout) -> None:
    """Mark DIR as this cluster's, before `up` makes anything in it (check_dir first)."""
    if not lay.marker.exists():
        write_atomic(lay.marker, "A one-node cluster of tracer's scripts/cluster (docs/cluster.md)"
                     ": `scripts/cluster down` removes what `up` made here.\n")


def up(lay: Layout) -> float:
    """Start the cluster; return the seconds it took. The caller holds the directory's lock and
    has run check_host, check_dir and claim."""
    t0 = time.monotonic()
    pause = subprocess.run([str(ROOT / "scripts" / "build-pause-image")], capture_output=True,
                           text=True)
    if pause.returncode != 0:
        raise ClusterError(f"scripts/build-pause-image failed: {pause.stderr.strip()}")

    n = _pick_subnet()
    st = {
        "dir": str(lay.root), "node": NODE, "kubernetes": KUBE_VERSION,
        "subnet": f"10.201.{n}.0/24", "gateway": f"10.201.{n}.1", "bridge": f"trc{n}",
        "cgroup_root": f"tracer-cluster-{n}",
        "etcd_port": _free_port(), "etcd_peer_port": _free_port(),
        "apiserver_port": _free_port(), "kubelet_port": _free_port(),
        "kubelet_healthz_port": _free_port(),
    }
    for d in (lay.pids, lay.logs, lay.pki, lay.kubelet, lay.cni_conf, lay.containerd):
        d.mkdir(parents=True, exist_ok=True)
    # Recorded before anything is made, so that `down` after a crash knows what to remove.
    write_atomic(lay.state, json.dumps(st, indent=1) + "\n")

    pki = Pki(lay.pki)
    pki.ensure_ca()
    pki.issue("apiserver", "kube-apiserver", server=True,
              ips=("127.0.0.1", st["gateway"], "10.202.0.1"),
              dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                   "kubernetes.default.svc.cluster.local"))
    pki.issue("kubelet-serving", f"system:node:{NODE}", ("system:nodes",), server=True,
              ips=("127.0.0.1", st["gateway"]), dns=(NODE, "localhost"))
    pki.issue("apiserver-kubelet", "kube-apiserver-kubelet-client", ("system:masters",))
    admin_crt, admin_key = pki.issue("admin", "tracer-admin", ("system:masters",))
    kubelet_crt, kubelet_key = pki.issue("kubelet", f"system:node:{NODE}", ("system:nodes",))
    local = f"https://127.0.0.1:{st['apiserver_port']}"
    kubeconfig(lay.admin_kubeconfig, local, pki.ca_crt, admin_crt, admin_key, "tracer-admin")
    kubeconfig(lay.kubelet / "kubeconfig", local, pki.ca_crt, kubelet_crt, kubelet_key,
               f"system:node:{NODE}")
    # What pods mount (hostPath) to reach the API server over the bridge; a test cluster, so
    # the operator is admin. Readable by the non-root users operators run as.
    kubeconfig(lay.pod_kubeconfig, f"https://{st['gateway']}:{st['apiserver_port']}",
               pki.ca_crt, admin_crt, admin_key, "tracer-admin", mode=0o644)

    _make_bridge(st)
    _make_cgroup_root(st["cgroup_root"])
    _cni_config(lay, st)
    api = admin_api(lay, st)
    _start_etcd(lay, st)
    _start_apiserver(lay, st, pki, api)
    _missing_controllers(api, pki)
    _start_containerd(lay)
    import_image(lay, Path(pause.stdout.strip().splitlines()[-1]))
    _start_kubelet(lay, st, api)
    return time.monotonic() - t0


def _node_pods(api: Api, node: str) -> list[dict]:
    pods = api.get(f"/api/v1/pods?fieldSelector=spec.nodeName%3D{node}")
    return pods.get("items", [])


def _delete_pods(api: Api, node: str, timeout: float = 40) -> None:
    """Deleted through the API with the kubelet still running: it stops each container and
    the pod's sandbox (the CNI plugin releases the address and removes the veth)."""
    for pod in _node_pods(api, node):
        md = pod["metadata"]
        api.delete(f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}",
                   {"gracePeriodSeconds": 2})
    deadline = time.monotonic() + timeout
    while _node_pods(api, node) and time.monotonic() < deadline:
        time.sleep(0.3)


def _containerd_leftovers(lay: Layout) -> None:
    """Tasks the kubelet left (a crashed `up`, a pod stuck terminating): killed, then deleted,
    so their shims exit; then the containers and their sandboxes' records."""
    listed = subprocess.run(ctr(lay, "tasks", "ls", "-q"), capture_output=True, text=True)
    tasks = listed.stdout.split() if listed.returncode == 0 else []
    for t in tasks:
        subprocess.run(ctr(lay, "tasks", "kill", "-a", "-s", "SIGKILL", t), capture_output=True)
    for t in tasks:
        subprocess.run(ctr(lay, "tasks", "delete", "-f", t), capture_output=True)
    listed = subprocess.run(ctr(lay, "containers", "ls", "-q"), capture_output=True, text=True)
    for c in listed.stdout.split() if listed.returncode == 0 else []:
        subprocess.run(ctr(lay, "containers", "delete", c), capture_output=True)


def _bundles(lay: Layout) -> list[Path]:
    """The task bundles in this cluster's containerd state (one per container and sandbox)."""
    tasks = lay.containerd / "state" / "io.containerd.runtime.v2.task"
    return [b for ns in sorted(tasks.iterdir()) if ns.is_dir()
            for b in sorted(ns.iterdir()) if b.is_dir()] if tasks.is_dir() else []


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def shims(lay: Layout) -> dict[int, int]:
    """This cluster's containerd shims, {PID: start time}, from what containerd recorded under
    DIR: a bundle's shim.pid where the shim writes one, else the parent of the task's process
    (the bundle's init.pid: the shim is its parent and subreaper). A PID counts only while the
    process's working directory is one of the bundles (the shim runs in its bundle), so a PID
    since reused, or a task reparented elsewhere, is never taken for a shim."""
    bundles = _bundles(lay)
    found: dict[int, int] = {}
    for b in bundles:
        for pid in (_read_pid(b / "shim.pid"), _parent(_read_pid(b / "init.pid") or 0)):
            if not pid or pid <= 1 or pid in found:
                continue
            started = procs.start_time(pid)
            try:
                cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
            except OSError:
                continue
            if started is not None and cwd in bundles:
                found[pid] = started
    return found


def down(lay: Layout) -> list[str]:
    """Stop everything `up` started and remove what it made; return what could not be removed.
    Safe on a directory `up` never finished, or one already down."""
    st = read_state(lay) or {}
    problems: list[str] = []

    def stop(name: str, grace: float = 10.0) -> None:
        try:
            procs.stop(lay.pids, name, grace)
        except ClusterError as exc:  # survived SIGKILL: said, and DIR is kept
            problems.append(str(exc))

    # The shims of the tasks there are now, found before anything stops them.
    found = shims(lay)
    if st and procs.running(lay.pids, "kube-apiserver") and procs.running(lay.pids, "kubelet"):
        try:
            _delete_pods(admin_api(lay, st), st["node"])
        except (OSError, ApiError, ssl.SSLError) as exc:
            problems.append(f"deleting the pods: {exc}")
    stop("kubelet", grace=15)
    if procs.running(lay.pids, "containerd"):
        _containerd_leftovers(lay)
    stop("containerd")
    found.update(shims(lay))
    for pid, started in found.items():  # a shim outlives containerd by design
        procs.kill_pid(pid, started)
    for pid in _cgroup_processes(st["cgroup_root"]) if st.get("cgroup_root") else ():
        procs.kill_pid(pid)  # containers whose shim is gone (a crashed containerd, a killed shim)
    stop("kube-apiserver")
    stop("etcd")
    for name in procs.records(lay.pids):  # anything else recorded
        stop(name)

    problems += [f"still mounted: {p}" for p in _unmount_all(lay.root)]
    if st.get("bridge"):
        # Host ends of veths whose pod netns outlived the kubelet, then the bridge itself.
        links = subprocess.run(["ip", "-j", "link", "show", "master", st["bridge"]],
                               capture_output=True, text=True)
        for link in json.loads(links.stdout or "[]") if links.returncode == 0 else []:
            subprocess.run(["ip", "link", "del", link["ifname"]], capture_output=True)
        subprocess.run(["ip", "link", "del", st["bridge"]], capture_output=True)
    if st.get("cgroup_root"):
        problems += [f"cgroup not removed: {p}" for p in _remove_cgroup_root(st["cgroup_root"])]
    _remove_container_log_links(lay)
    if not problems:
        problems += _remove_made(lay)
    return problems


def _remove_made(lay: Layout) -> list[str]:
    """What `up` makes in DIR (Layout.made), and nothing else: the logs (kept for a look after
    a failure; the next `up` appends), .lock, the marker and anything not `up`'s stay.
    state.json goes last, once the rest has, so that the next `down` tries again."""
    left = []
    for path in lay.made():
        if path == lay.state and left:
            break
        if path.is_dir() and not path.is_symlink():
            rm = subprocess.run(["rm", "-rf", "--one-file-system", str(path)],
                                capture_output=True, text=True)
            if rm.returncode != 0 or path.exists():
                left.append(f"not removed: {path}: {rm.stderr.strip()}")
        else:
            path.unlink(missing_ok=True)
        # write_atomic's temporary files beside it, if a crash left one.
        for tmp in path.parent.glob(f".{path.name}.*") if path.parent == lay.root else ():
            tmp.unlink(missing_ok=True)
    return left


def _remove_container_log_links(lay: Layout) -> None:
    # The kubelet links /var/log/containers/*.log to the pod logs (a fixed path, not settable).
    logs = Path("/var/log/containers")
    for link in logs.glob("*.log") if logs.is_dir() else ():
        try:
            if link.is_symlink() and os.readlink(link).startswith(str(lay.root) + "/"):
                link.unlink()
        except OSError:
            pass

"""The container images of issue 16, checked without a cluster: scripts/oci-image's archives
are valid OCI image layouts (digests, sizes, diff_ids), named as a kubelet asks for them,
reproducible, and never follow a link; the pause image runs, reaps and stops; the agent
image's rootfs runs `tracer agent` with gdb's Python and traces a sample operator (chroot);
a throwaway containerd, when Debian's is installed, imports them and lists them by ref.

The pause and agent archives come from their scripts' caches ($TRACER_CACHE/images): the
first run builds the agent image (about 35 s), later runs only check it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OCI_IMAGE = ROOT / "scripts" / "oci-image"
SAMPLE = ROOT / "build" / "samples" / "go1.27" / "sample-operator-stripped"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
AGENT_REF = f"localhost/tracer-agent:{VERSION}"
PAUSE_REF = "localhost/tracer-pause:3.10"
# What the agent image must not hold: the dependencies only local commands import.
LEFT_OUT = ["polars", "matplotlib", "kubernetes", "opentelemetry"]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chroot, mknod)")


# --- reading an archive -------------------------------------------------------------------

@dataclass
class Layout:
    index: dict
    manifest: dict
    config: dict
    layer_gz: bytes
    members: list[tarfile.TarInfo]

    @property
    def annotations(self) -> dict:
        return self.index["manifests"][0]["annotations"]


def read_layout(archive: Path) -> Layout:
    """The archive's parts, after checking it is a valid one-image OCI layout."""
    blobs: dict[str, bytes] = {}
    files: dict[str, bytes] = {}
    with tarfile.open(archive, "r:") as tar:
        for member in tar:
            assert member.mtime == 0 and member.uid == 0 and member.gid == 0, member.name
            if not member.isfile():
                continue
            data = tar.extractfile(member).read()
            if member.name.startswith("blobs/sha256/"):
                hexdigest = member.name.rsplit("/", 1)[1]
                assert hashlib.sha256(data).hexdigest() == hexdigest, member.name
                blobs["sha256:" + hexdigest] = data
            else:
                files[member.name] = data
    assert set(files) == {"oci-layout", "index.json"}
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    [desc] = index["manifests"]

    def blob(desc: dict, media_type: str) -> bytes:
        assert desc["mediaType"] == media_type
        data = blobs[desc["digest"]]
        assert len(data) == desc["size"], desc["digest"]
        return data

    manifest = json.loads(blob(desc, "application/vnd.oci.image.manifest.v1+json"))
    assert desc["platform"] == {"architecture": "amd64", "os": "linux"}
    assert manifest["schemaVersion"] == 2
    config = json.loads(blob(manifest["config"], "application/vnd.oci.image.config.v1+json"))
    [layer_desc] = manifest["layers"]
    layer_gz = blob(layer_desc, "application/vnd.oci.image.layer.v1.tar+gzip")
    assert len(blobs) == 3, "a blob nothing refers to"
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert config["rootfs"]["type"] == "layers"
    assert config["rootfs"]["diff_ids"] == [
        "sha256:" + hashlib.sha256(gzip.decompress(layer_gz)).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(layer_gz), mode="r:gz") as tar:
        members = tar.getmembers()
    return Layout(index, manifest, config, layer_gz, members)


def oci_image(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(OCI_IMAGE), *args], capture_output=True, text=True, timeout=120)


def unpack(layout: Layout, dest: Path) -> Path:
    """The layer unpacked as the runtime does (numeric owners, devices made: root)."""
    layer = dest.parent / (dest.name + ".tar.gz")
    layer.write_bytes(layout.layer_gz)
    dest.mkdir()
    subprocess.run(["tar", "-xzf", str(layer), "-C", str(dest), "--numeric-owner"], check=True)
    layer.unlink()
    return dest


# --- scripts/oci-image --------------------------------------------------------------------

def make_tree(root: Path) -> None:
    """A rootfs with every kind of entry a layer must handle, and links that lead out."""
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    tool = root / "usr" / "bin" / "tool"
    tool.write_bytes(b"#!/bin/sh\necho tool\n")
    tool.chmod(0o4755)  # setuid kept
    os.link(tool, root / "usr" / "bin" / "tool-again")
    (root / "home" / "user").mkdir(parents=True)
    os.chown(root / "home" / "user", 1000, 1000)
    os.symlink("/etc/shadow", root / "etc" / "abs-link")  # absolute: not followed
    os.symlink("../../../../..", root / "home" / "user" / "up")  # out of the rootfs
    os.symlink("/", root / "host")  # the host's root: its files must not come in
    if os.geteuid() == 0:
        (root / "dev").mkdir()
        os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(root / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock"))  # a tar cannot hold one: left out


def test_layer_entries(tmp_path):
    make_tree(tmp_path / "rootfs")
    extra = tmp_path / "extra.sh"
    extra.write_text("#!/bin/sh\n")
    out = tmp_path / "image.tar"
    result = oci_image("--out", str(out), "--ref", "localhost/t:1",
                       "--rootfs", str(tmp_path / "rootfs"),
                       "--add", f"{extra}:/opt/x/run.sh:0750", "--add", f"{extra}:/etc/hosts",
                       "--entrypoint", '["/opt/x/run.sh"]', "--cmd", '["-v"]',
                       "--env", "A=1", "--user", "65532:65532", "--workdir", "/tmp")
    assert result.returncode == 0, result.stderr
    layout = read_layout(out)
    by_name = {m.name: m for m in layout.members}
    names = [m.name for m in layout.members]
    assert names == sorted(names) and len(names) == len(set(names))
    assert all(m.mtime == 0 and not m.uname and not m.gname for m in layout.members)
    assert "sock" not in by_name and not any(n.startswith("host/") for n in names)
    assert by_name["host"].issym() and by_name["host"].linkname == "/"
    assert by_name["etc/abs-link"].linkname == "/etc/shadow"
    assert by_name["home/user/up"].linkname == "../../../../.."
    assert (by_name["home/user"].uid, by_name["home/user"].gid) == (1000, 1000)
    first, second = by_name["usr/bin/tool"], by_name["usr/bin/tool-again"]
    assert first.isfile() and first.mode == 0o4755
    assert second.islnk() and second.linkname == "usr/bin/tool"
    assert by_name["fifo"].isfifo()
    if os.geteuid() == 0:
        null = by_name["dev/null"]
        assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)
    # --add: its mode or the file's, root's, replacing the rootfs's entry, parents made.
    assert by_name["opt"].isdir() and by_name["opt/x"].isdir()
    assert by_name["opt/x/run.sh"].mode == 0o750 and by_name["opt/x/run.sh"].uid == 0
    assert by_name["etc/hosts"].size == extra.stat().st_size
    config = layout.config["config"]
    assert config["Entrypoint"] == ["/opt/x/run.sh"] and config["Cmd"] == ["-v"]
    assert config["User"] == "65532:65532" and config["WorkingDir"] == "/tmp"
    assert "A=1" in config["Env"] and any(e.startswith("PATH=/usr/local/sbin:") for e in
                                          config["Env"])


def test_same_input_same_bytes(tmp_path):
    """Two trees made apart (other inodes, other times) give the very same archive."""
    for name in ("a", "b"):
        make_tree(tmp_path / name)
        os.utime(tmp_path / name / "etc" / "hosts", (1, 1 if name == "a" else 2))
        result = oci_image("--out", str(tmp_path / f"{name}.tar"), "--ref", "tracer-x:1",
                           "--rootfs", str(tmp_path / name), "--entrypoint", '["/x"]')
        assert result.returncode == 0, result.stderr
        time.sleep(0.01)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


@pytest.mark.parametrize(("ref", "name", "tag"), [
    ("localhost/tracer-pause:3.10", "localhost/tracer-pause:3.10", "3.10"),
    ("tracer-agent:0.1.0", "docker.io/library/tracer-agent:0.1.0", "0.1.0"),
    ("me/op", "docker.io/me/op:latest", "latest"),
    ("registry.example.com:5000/a/b:v1", "registry.example.com:5000/a/b:v1", "v1"),
])
def test_refs_as_a_kubelet_names_them(tmp_path, ref, name, tag):
    (tmp_path / "f").write_text("x")
    result = oci_image("--out", str(tmp_path / "i.tar"), "--ref", ref, "--add",
                       f"{tmp_path / 'f'}:/f")
    assert result.returncode == 0, result.stderr
    assert read_layout(tmp_path / "i.tar").annotations == {
        "io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}


def test_output_replaced_whole_and_refusals(tmp_path):
    (tmp_path / "f").write_text("x")
    victim = tmp_path / "victim"
    victim.write_text("keep")
    out = tmp_path / "i.tar"
    out.symlink_to(victim)  # replaced, not written through
    assert oci_image("--out", str(out), "--ref", "x:1", "--add",
                     f"{tmp_path / 'f'}:/f").returncode == 0
    assert not out.is_symlink() and victim.read_text() == "keep"
    before = sorted(os.listdir(tmp_path))
    for args, words in [
        (["--add", "/no/such:/f"], "/no/such"),
        (["--add", f"{tmp_path / 'f'}:relative"], "absolute"),
        (["--add", f"{tmp_path / 'f'}:/f:999"], "octal"),
        (["--entrypoint", "tracer agent"], "JSON list"),
        (["--user", "nobody"], "UID"),
        (["--ref", "UPPER/case:1"], "not a valid image name"),
        ([], "nothing to put in the image"),
    ]:
        argv = ["--out", str(out), *(["--ref", "x:1"] if "--ref" not in args else []), *args]
        result = oci_image(*argv)
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
            result.stderr
    assert sorted(os.listdir(tmp_path)) == before, "a temporary file was left behind"


# --- the pause image ----------------------------------------------------------------------

def build(script: str, *args: str, env: dict | None = None, timeout: int = 900) -> list[str]:
    result = subprocess.run([str(ROOT / "scripts" / script), *args], capture_output=True,
                            text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


@pytest.fixture(scope="session")
def pause_archive() -> Path:
    return Path(build("build-pause-image")[0])


def test_pause_image(pause_archive, tmp_path):
    layout = read_layout(pause_archive)
    assert layout.annotations["io.containerd.image.name"] == PAUSE_REF
    assert layout.config["config"]["Entrypoint"] == ["/pause"]
    assert [m.name for m in layout.members] == ["pause"]
    # Rebuilt from nothing (another cache), the same bytes.
    env = {**os.environ, "TRACER_CACHE": str(tmp_path / "cache")}
    assert Path(build("build-pause-image", env=env)[0]).read_bytes() == \
        pause_archive.read_bytes()

    with tarfile.open(fileobj=io.BytesIO(layout.layer_gz), mode="r:gz") as tar:
        binary = tar.extractfile("pause").read()
    pause = tmp_path / "pause"
    pause.write_bytes(binary)
    pause.chmod(0o755)
    assert b"interp" not in subprocess.run(["readelf", "-lW", str(pause)], capture_output=True
                                            ).stdout.replace(b"INTERP", b"interp"), "not static"
    for sig in (signal.SIGTERM, signal.SIGINT):
        # A child it inherits (as PID 1 inherits orphans) is reaped when it ends.
        proc = subprocess.Popen(["sh", "-c", f"sleep 0.2 & exec {pause}"])
        time.sleep(1.0)
        children = [line.split() for line in
                    subprocess.run(["ps", "-o", "pid=,stat=", "--ppid", str(proc.pid)],
                                   capture_output=True, text=True).stdout.splitlines()]
        assert proc.poll() is None, "pause did not keep running"
        assert not children, f"an unreaped child: {children}"
        proc.send_signal(sig)
        assert proc.wait(5) == 0


# --- the agent image ----------------------------------------------------------------------

@pytest.fixture(scope="session")
def agent_archive() -> Path:
    if os.geteuid() != 0:
        pytest.skip("scripts/build-agent-image needs root (mmdebstrap, chroot)")
    path, ref = build("build-agent-image")
    assert ref == AGENT_REF
    return Path(path)


@pytest.fixture(scope="session")
def agent_layout(agent_archive) -> Layout:
    return read_layout(agent_archive)


@pytest.fixture(scope="session")
def agent_rootfs(agent_layout, tmp_path_factory) -> Path:
    return unpack(agent_layout, tmp_path_factory.mktemp("agent") / "rootfs")


def in_rootfs(rootfs: Path, *command: str, **kwargs) -> subprocess.Popen:
    """command in the rootfs, with its own /proc and the host's /dev mounted in a mount
    namespace of its own (gone, mounts and all, when the command ends)."""
    script = ('mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && r=$1 && shift '
              '&& exec chroot "$r" "$@"')
    return subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script, "sh", str(rootfs), *command], **kwargs)


def run_in(rootfs: Path, *command: str) -> str:
    proc = in_rootfs(rootfs, *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     stdin=subprocess.DEVNULL, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"{command}: {err}"
    return out


def test_agent_image_config(agent_layout):
    assert agent_layout.annotations == {"io.containerd.image.name": AGENT_REF,
                                        "org.opencontainers.image.ref.name": VERSION}
    config = agent_layout.config["config"]
    assert config["Entrypoint"] == ["tracer", "agent"]
    assert "User" not in config  # root: see scripts/build-agent-image's header
    names = {m.name for m in agent_layout.members}
    assert "usr/local/bin/tracer" in names
    # Minimal: no apt, no package lists, no man pages, no documentation but copyrights.
    assert not [n for n in names if n.startswith(("var/lib/apt/lists/", "var/cache/apt/",
                                                  "usr/share/man/", "usr/bin/apt"))]
    assert not [n for n in names if n.startswith("usr/share/doc/")
                and not n.endswith("/copyright") and n.count("/") > 3]
    assert len(agent_layout.layer_gz) < 100 << 20


@needs_root
def test_agent_rootfs_runs_tracer_and_gdb(agent_rootfs):
    assert "Usage: tracer agent" in run_in(agent_rootfs, "tracer", "agent", "--help")
    python = run_in(agent_rootfs, "python3", "-c", "import sys; print(sys.version)").strip()
    assert python.startswith("3.11.")
    gdb_python = run_in(agent_rootfs, "gdb", "-nx", "-batch", "-ex",
                        "python import sys; print(sys.version)").strip()
    assert gdb_python == python, "gdb embeds another Python than python3"
    found = run_in(agent_rootfs, "python3", "-c",
                   "import tracer.backends.gdb.backend as b, tracer.probes.library as l, "
                   "importlib.metadata as m; print(l.shipped_dir()); print(b.HIT_HANDLER); "
                   "print(m.version('tracer')); print(' '.join(sorted(d.metadata['Name']"
                   ".lower() for d in m.distributions())))").split("\n")
    assert found[0] == "/usr/share/tracer/probes"
    assert found[1].startswith("/usr/local/lib/python3.11/dist-packages/tracer/")
    assert (agent_rootfs / found[1].lstrip("/")).is_file()
    assert found[2] == VERSION
    installed = found[3].split()
    assert not [d for d in installed if d.startswith(tuple(LEFT_OUT))], installed
    assert sorted((agent_rootfs / "usr/share/tracer/probes").glob("*.toml")) != []


OPERATOR_KNOBS = "-workers 4 -calls 0 -rate 400 -work-us 200"


def agent_run(rootfs: Path, pid: int | None = None) -> tuple[list[dict], str]:
    """`tracer agent --no-wait --duration 2` in the rootfs, its input held open: its stream
    and its stderr. Without a PID, the stripped sample operator is started in the rootfs
    first, in the agent's mount namespace (as when both are in one container), and ended
    afterwards."""
    mounts = 'mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" || exit 1; '
    if pid is None:
        shutil.copy(SAMPLE, rootfs / "tmp" / "operator")
        script = (mounts + f'chroot "$1" /tmp/operator {OPERATOR_KNOBS} >/dev/null 2>&1 & '
                  'echo $! > "$1/tmp/operator.pid"; sleep 1; '
                  'exec chroot "$1" tracer agent --no-wait --duration 2 $!')
    else:
        script = mounts + f'exec chroot "$1" tracer agent --no-wait --duration 2 {pid}'
    with open(rootfs / "tmp" / "agent.stderr", "w+") as err:
        agent = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
             str(rootfs)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        try:
            out = agent.stdout.read()  # to the end: the agent's end line, then EOF
            agent.wait(60)
        finally:
            agent.stdin.close()
            if agent.poll() is None:
                agent.kill()
                agent.wait()
            if pid is None and (rootfs / "tmp" / "operator.pid").exists():
                os.kill(int((rootfs / "tmp" / "operator.pid").read_text()), signal.SIGKILL)
        err.seek(0)
        return [json.loads(line) for line in out.splitlines()], err.read()


def check_traced(lines: list[dict], err: str) -> None:
    assert lines and lines[0]["type"] == "hello", err
    spans = [r for r in lines if r["type"] == "span"]
    end = lines[-1]
    assert end["type"] == "end" and end["reason"] == "duration", err
    assert end["code_restored"] is True and spans, (end, err)
    assert end["spans"] + end["unfinished"] == len(spans), end  # the unfinished are spans too
    assert all(s["function"].endswith("(*SampleReconciler).Reconcile") for s in spans)


@needs_root
def test_agent_in_its_rootfs_traces_an_operator(agent_rootfs):
    if not SAMPLE.exists():
        pytest.skip(f"{SAMPLE} is not built (scripts/setup)")
    check_traced(*agent_run(agent_rootfs))


@needs_root
def test_agent_traces_an_operator_outside_its_root(agent_rootfs):
    """As in an ephemeral container: the operator's program is not in the agent's files
    (its /proc/PID/exe link names a path of another mount namespace; the program is read
    through /proc/PID/exe itself)."""
    if not SAMPLE.exists():
        pytest.skip(f"{SAMPLE} is not built (scripts/setup)")
    op = subprocess.Popen([str(SAMPLE), *OPERATOR_KNOBS.split()], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        check_traced(*agent_run(agent_rootfs, op.pid))
    finally:
        op.kill()
        op.wait()


# --- a throwaway containerd ---------------------------------------------------------------

@needs_root
@pytest.mark.skipif(not (shutil.which("containerd") and shutil.which("ctr")),
                    reason="Debian's containerd is not installed")
def test_containerd_imports_the_images(pause_archive, agent_archive, tmp_path):
    (tmp_path / "f").write_text("x")
    short = tmp_path / "short.tar"  # a name the kubelet normalizes to docker.io/library/
    assert oci_image("--out", str(short), "--ref", "tracer-x:1", "--add",
                     f"{tmp_path / 'f'}:/f").returncode == 0
    sock = tmp_path / "c.sock"
    config = tmp_path / "config.toml"
    config.write_text(f"""version = 2
root = "{tmp_path / 'root'}"
state = "{tmp_path / 'state'}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{tmp_path / 'debug.sock'}"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  disable_apparmor = true
""")
    log = open(tmp_path / "containerd.log", "w")
    daemon = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert daemon.poll() is None, (tmp_path / "containerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "containerd did not open its socket"
            time.sleep(0.1)
        ctr = ["ctr", "-a", str(sock), "-n", "k8s.io"]
        for archive in (pause_archive, agent_archive, short):
            result = subprocess.run([*ctr, "images", "import", str(archive)],
                                    capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, result.stderr
        # The CRI plugin (what a kubelet talks to) lists each by its config digest too.
        deadline = time.monotonic() + 10
        while True:
            refs = subprocess.run([*ctr, "images", "ls", "-q"], capture_output=True, text=True,
                                  check=True).stdout.split()
            ids = [read_layout(a).manifest["config"]["digest"]
                   for a in (pause_archive, agent_archive)]
            if all(i in refs for i in ids) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert {PAUSE_REF, AGENT_REF, "docker.io/library/tracer-x:1"} <= set(refs), refs
        assert all(i in refs for i in ids), refs
        check = subprocess.run([*ctr, "images", "check"], capture_output=True, text=True,
                               check=True).stdout
        for ref in (PAUSE_REF, AGENT_REF):
            line = next(line for line in check.splitlines() if line.startswith(ref + " "))
            assert "complete" in line and line.split()[-1] == "true", line  # unpacked
    finally:
        daemon.terminate()
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

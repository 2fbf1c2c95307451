"""Finding a container's process by its id when its cgroups do not name it: the runtime's
per-container files mounted into it (mountinfo), as containerd and Docker do."""

from __future__ import annotations

import secrets
import subprocess

from helpers import end_process, sample, wait_until

from tracer.targets.containers import container_pid, container_processes


def test_container_found_by_its_mounts(tmp_path):
    cid = secrets.token_hex(32)
    state = tmp_path / "containers" / cid
    state.mkdir(parents=True)
    (state / "hostname").write_text("op-mounts\n")
    # What runc does for a container: its own mount namespace, with /etc/hostname bound from
    # the runtime's directory for that container.
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount --bind {state / 'hostname'} /etc/hostname && exec \"$0\" -linger -calls 1",
         str(sample("go1.27/sample-operator"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Until sh execs the operator, its `mount` child is briefly in the namespace too.
        wait_until(lambda: proc.pid in [p.pid for p in container_processes(f"containerd://{cid}")],
                   10, "the process to be found")
        wait_until(lambda: len(container_processes(f"containerd://{cid}")) == 1, 5,
                   "the runtime's helper process to be gone")
        found = container_processes(f"containerd://{cid}")
        assert [p.pid for p in found] == [proc.pid]
        assert found[0].how == "mountinfo" and cid in found[0].cgroup
        pid, why = container_pid(f"docker://{cid}")
        assert pid == proc.pid and "mountinfo" in why
    finally:
        end_process(proc)


def test_an_id_that_is_nowhere_is_not_found():
    assert container_processes("containerd://" + secrets.token_hex(32)) == []
    assert container_processes("containerd://not-an-id") == []

"""A real Kubernetes control plane for the tests: Debian's etcd and a kube-apiserver built by
scripts/build-kube-apiserver, both on loopback, ended by PID.

There is no kubelet, scheduler or controller-manager: tests create Pods with spec.nodeName set
and write their status themselves (see pods.py).
"""

from __future__ import annotations

import datetime
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
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from helpers import wait_until
from kubernetes import client, config

KUBE_VERSION = "1.20.2"
CACHE = Path(os.environ.get("TRACER_CACHE", Path.home() / ".cache" / "tracer"))
# -r2: built with reflect2 1.0.2 (scripts/build-kube-apiserver says why).
APISERVER = CACHE / f"kube-apiserver-{KUBE_VERSION}-r2" / "kube-apiserver"

ADMIN_USER = "tracer-admin"
DENIED_USER = "nobody-special"


def apiserver_binary() -> Path:
    if not os.access(APISERVER, os.X_OK):
        pytest.fail(f"{APISERVER} is missing: run scripts/setup (or scripts/build-kube-apiserver)")
    return APISERVER


def etcd_binary() -> str:
    etcd = shutil.which("etcd")
    if etcd is None:
        pytest.fail("etcd is missing: run scripts/setup (it installs Debian's etcd-server)")
    return etcd


def free_port() -> int:
    # The port is free when we look; etcd and the apiserver bind it right after.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_certs(directory: Path) -> dict[str, Path]:
    """A throw-away CA, a serving certificate for 127.0.0.1/localhost signed by it, and the
    service-account signing key that kube-apiserver 1.20 requires."""
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tracer-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    key = ec.generate_private_key(ec.SECP256R1())
    serving = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
               .issuer_name(ca_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(valid[0]).not_valid_after(valid[1])
               .add_extension(x509.SubjectAlternativeName([
                   x509.DNSName("localhost"), x509.DNSName("kubernetes.default.svc"),
                   x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
               .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                              critical=False)
               .sign(ca_key, hashes.SHA256()))

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    paths = {name: directory / f"{name}.pem" for name in ("ca", "serving", "serving-key", "sa")}
    paths["ca"].write_bytes(_pem_cert(ca))
    paths["serving"].write_bytes(_pem_cert(serving))
    paths["serving-key"].write_bytes(_pem_key(key))
    paths["sa"].write_bytes(_pem_key(sa_key))
    for path in paths.values():
        path.chmod(0o600)
    return paths


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float,
                 ssl_context: ssl.SSLContext | None = None, token: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                        timeout=2, context=ssl_context) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    pytest.fail(f"{url} not healthy after {timeout} s ({last}):\n{log.read_text()[-3000:]}")


def _kubeconfig(path: Path, server: str, ca: Path, users: dict[str, str]) -> Path:
    """One context per user (named after the user), the first one current."""
    # JSON is YAML, which is what kubeconfig readers parse.
    path.write_text(json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tracer-test",
                      "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"token": token}} for user, token in users.items()],
        "contexts": [{"name": user, "context": {"cluster": "tracer-test", "user": user,
                                                "namespace": "default"}} for user in users],
        "current-context": next(iter(users)),
    }, indent=1))
    path.chmod(0o600)
    return path


def _end(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM to this PID only
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class KubeCluster:
    """A running etcd + kube-apiserver. `kubeconfig`'s current context is an admin
    (system:masters, context ADMIN_USER) and it has a second context, DENIED_USER, for a user
    that RBAC gives no rights at all; `denied_kubeconfig` has only that user."""

    directory: Path
    server: str  # https://127.0.0.1:PORT
    ca: Path
    admin_token: str
    denied_token: str
    kubeconfig: Path
    denied_kubeconfig: Path
    etcd: subprocess.Popen
    apiserver: subprocess.Popen
    etcd_log: Path
    apiserver_log: Path
    ready_seconds: float  # from starting etcd to /readyz answering 200
    node_name: str = field(default_factory=socket.gethostname)
    api_client: client.ApiClient = field(init=False)

    def __post_init__(self) -> None:
        self.api_client = config.new_client_from_config(config_file=str(self.kubeconfig))

    def client_for(self, kubeconfig: Path) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(kubeconfig))

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    def stop(self) -> None:
        self.api_client.close()
        _end(self.apiserver)
        _end(self.etcd)


def start_cluster(directory: Path, ready_timeout: float = 120,
                  ephemeral_containers: bool = True) -> KubeCluster:
    """`ephemeral_containers`: whether 1.20 serves pods/ephemeralcontainers (an alpha
    feature gate there, on by default from 1.23)."""
    apiserver = apiserver_binary()
    etcd = etcd_binary()
    directory.mkdir(parents=True, exist_ok=True)
    certs = write_certs(directory)
    admin_token = os.urandom(16).hex()
    denied_token = os.urandom(16).hex()
    tokens = directory / "tokens.csv"
    # token,user,uid,"groups": the admin is a cluster-admin through system:masters; the other
    # user is only system:authenticated, which RBAC's bootstrap roles let list no pods.
    tokens.write_text(f'{admin_token},{ADMIN_USER},1000,"system:masters"\n'
                      f"{denied_token},{DENIED_USER},1001\n")
    tokens.chmod(0o600)

    t0 = time.monotonic()
    client_port, peer_port = free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{client_port}"
    etcd_log = directory / "etcd.log"
    etcd_proc = subprocess.Popen(
        [etcd, "--name", "tracer-test", "--data-dir", str(directory / "etcd"),
         "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
         "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
         "--initial-cluster", f"tracer-test=http://127.0.0.1:{peer_port}",
         "--log-level", "warn", "--logger", "zap"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(etcd_log, "w"),
    )
    apiserver_proc = None
    try:
        wait_healthy(f"{etcd_url}/health", etcd_proc, etcd_log, ready_timeout)
        port = free_port()
        apiserver_log = directory / "kube-apiserver.log"
        apiserver_proc = subprocess.Popen(
            [str(apiserver),
             "--etcd-servers", etcd_url,
             "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
             "--secure-port", str(port), "--insecure-port", "0",
             "--cert-dir", str(directory / "apiserver-certs"),
             "--tls-cert-file", str(certs["serving"]),
             "--tls-private-key-file", str(certs["serving-key"]),
             "--client-ca-file", str(certs["ca"]),
             "--token-auth-file", str(tokens),
             "--authorization-mode", "RBAC",
             "--anonymous-auth=false",
             # No ServiceAccount controller runs, so the admission plugin would refuse every Pod
             # (no default ServiceAccount in the namespace).
             "--disable-admission-plugins", "ServiceAccount",
             "--service-account-issuer", "https://kubernetes.default.svc",
             "--service-account-signing-key-file", str(certs["sa"]),
             "--service-account-key-file", str(certs["sa"]),
             "--service-cluster-ip-range", "10.96.0.0/16",
             # The 'kubernetes' Service's endpoint would be 127.0.0.1, which validation rejects.
             "--endpoint-reconciler-type", "none",
             # 1.20 serves pods/ephemeralcontainers only behind this (alpha) gate.
             "--feature-gates", f"EphemeralContainers={str(ephemeral_containers).lower()}",
             "--profiling=false", "--logtostderr", "-v", "1"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(apiserver_log, "w"),
        )
        server = f"https://127.0.0.1:{port}"
        ssl_context = ssl.create_default_context(cafile=str(certs["ca"]))
        wait_healthy(f"{server}/readyz", apiserver_proc, apiserver_log, ready_timeout,
                     ssl_context=ssl_context, token=admin_token)
    except BaseException:
        if apiserver_proc is not None:
            _end(apiserver_proc)
        _end(etcd_proc)
        raise
    ready = time.monotonic() - t0
    cluster = KubeCluster(
        directory=directory, server=server, ca=certs["ca"],
        admin_token=admin_token, denied_token=denied_token,
        # The admin's file also holds the other user's context, for --context.
        kubeconfig=_kubeconfig(directory / "admin.kubeconfig", server, certs["ca"],
                               {ADMIN_USER: admin_token, DENIED_USER: denied_token}),
        denied_kubeconfig=_kubeconfig(directory / "denied.kubeconfig", server, certs["ca"],
                                      {DENIED_USER: denied_token}),
        etcd=etcd_proc, apiserver=apiserver_proc, etcd_log=etcd_log,
        apiserver_log=apiserver_log, ready_seconds=ready,
    )
    register_node(cluster)
    # /readyz can answer before the API server's bootstrap has made the "default" namespace
    # (a pod made at once was refused "namespaces default not found", seen once).
    wait_until(lambda: _has_namespace(cluster, "default"), ready_timeout,
               'the "default" namespace')
    return cluster


def _has_namespace(cluster: KubeCluster, name: str) -> bool:
    try:
        cluster.core.read_namespace(name)
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def register_node(cluster: KubeCluster) -> None:
    """This machine as a Ready Node, as its kubelet would register it: pods name it in
    spec.nodeName."""
    core = cluster.core
    core.create_node({"metadata": {"name": cluster.node_name,
                                   "labels": {"kubernetes.io/hostname": cluster.node_name}}})
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    core.patch_node_status(cluster.node_name, {"status": {
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                      {"type": "Hostname", "address": cluster.node_name}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}]}})

"""The cluster's certificates, made with `cryptography`: one CA signs the API server's and the
kubelet's serving certificates and every client certificate; kubeconfigs embed them.

Kubernetes takes the user from a client certificate's CN and the groups from its O: admin is in
system:masters (every permission), the kubelet is system:node:<node> in system:nodes (what the
Node authorizer expects), the API server's client for the kubelet is in system:masters too so
the kubelet's webhook authorization allows exec, attach and logs.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .files import write_atomic

VALID = datetime.timedelta(days=365)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Pki:
    """Files under DIR/pki; the CA is made once, the rest on demand."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca_crt = directory / "ca.crt"
        self.ca_key = directory / "ca.key"

    def ensure_ca(self) -> None:
        if self.ca_crt.exists() and self.ca_key.exists():
            return
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = _name("tracer-cluster-ca")
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + 10 * VALID)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                             False), critical=True)
                .sign(key, hashes.SHA256()))
        write_atomic(self.ca_key, _key_pem(key), 0o600)
        write_atomic(self.ca_crt, cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, cn: str, orgs: tuple[str, ...] = (), *, server: bool = False,
              ips: tuple[str, ...] = (), dns: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """Write NAME.crt and NAME.key (a client or a serving certificate); return their paths."""
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        ca = x509.load_pem_x509_certificate(self.ca_crt.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (x509.CertificateBuilder().subject_name(_name(cn, orgs))
                   .issuer_name(ca.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + VALID)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if server:
            sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
            sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        crt, keyfile = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        write_atomic(keyfile, _key_pem(key), 0o600)
        write_atomic(crt, cert.public_bytes(serialization.Encoding.PEM))
        return crt, keyfile

    def service_account_keys(self) -> tuple[Path, Path]:
        """The key the API server signs service account tokens with, and its public half."""
        key_path, pub_path = self.dir / "sa.key", self.dir / "sa.pub"
        if not key_path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            write_atomic(key_path, _key_pem(key), 0o600)
            write_atomic(pub_path, key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return key_path, pub_path


def kubeconfig(path: Path, server: str, ca_crt: Path, crt: Path, key: Path, user: str,
               mode: int = 0o600) -> None:
    """A kubeconfig with everything embedded, so it works from any mount point. JSON is YAML."""
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "tracer",
        "clusters": [{"name": "tracer", "cluster": {
            "server": server, "certificate-authority-data": b64(ca_crt)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(crt), "client-key-data": b64(key)}}],
        "contexts": [{"name": "tracer", "context": {"cluster": "tracer", "user": user}}],
    }
    write_atomic(path, json.dumps(config, indent=1) + "\n", mode)

"""The API connection: kubeconfig or in-cluster, and API errors said in one line."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tracer.errors import UserError

IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@dataclass
class Connection:
    api: object  # kubernetes.client.ApiClient
    context: str  # what was used, for messages and the header
    namespace: str  # the context's namespace (or the pod's own, in-cluster)


def connect(kubeconfig: str | None, context: str | None, wanted: str = "") -> Connection:
    """kubectl's order: --kubeconfig, $KUBECONFIG, ~/.kube/config; in-cluster when none of
    them exists and the pod's service account is mounted."""
    from kubernetes import client, config

    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or \
        os.path.expanduser("~/.kube/config")
    if kubeconfig and not os.path.isfile(kubeconfig):
        raise UserError(f"--kubeconfig {kubeconfig}: no such file")
    if not os.path.isfile(path):
        if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.isfile(IN_CLUSTER_TOKEN):
            if context:
                raise UserError("--context needs a kubeconfig; in a pod the tracer uses the "
                                "pod's service account")
            config.load_incluster_config()
            ns_file = os.path.join(os.path.dirname(IN_CLUSTER_TOKEN), "namespace")
            with open(ns_file) as f:
                namespace = f.read().strip() or "default"
            return Connection(client.ApiClient(), "in-cluster", namespace)
        what = f"{wanted!r} is not a PID, and there is " if wanted else "there is "
        raise UserError(
            f"{what}no kubeconfig to find pods with: {path} does not exist and this is not a "
            "pod; pass --kubeconfig FILE or set KUBECONFIG (or give a PID)")
    try:
        contexts, current = config.list_kube_config_contexts(config_file=path)
        chosen = next((c for c in contexts if c["name"] == context), None) if context \
            else current
        if context and chosen is None:
            names = ", ".join(c["name"] for c in contexts) or "none"
            raise UserError(f"no context {context!r} in {path} (contexts: {names})")
        api = config.new_client_from_config(config_file=path, context=context,
                                            persist_config=False)
    except config.ConfigException as exc:
        raise UserError(f"the kubeconfig {path} cannot be used: {exc}") from None
    namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    return Connection(api, (chosen or {}).get("name", "?"), namespace)


def api_error(exc: Exception, verb: str, resource: str, namespace: str | None,
              name: str | None = None) -> UserError:
    """An ApiException or a connection failure as one line that says what to do."""
    status = getattr(exc, "status", None)
    where = f" in namespace {namespace}" if namespace else ""
    what = f"{resource.removesuffix('s')} {name}" if name else resource
    if status == 403:
        message = _status_message(exc)
        if "violates PodSecurity" in message or "denied the request" in message:
            # Not RBAC: an admission policy (Pod Security, a webhook) refused the object.
            return UserError(f"the API server refused to {verb} {what}{where}: "
                             f"{_cut(message)}")
        return UserError(f"access denied: the account may not {verb} {resource}{where} "
                         f"(RBAC: grant verb {verb!r} on resource {resource!r})")
    if status == 401:
        return UserError("the API server rejected the credentials (401): the kubeconfig's "
                         "token or certificate is wrong or expired")
    if status == 404:
        return UserError(f"{what} not found{where}")
    if status is None or status == 0:
        reason = getattr(exc, "reason", None) or exc
        return UserError(f"cannot reach the API server: {reason}")
    reason = getattr(exc, "reason", "") or ""
    return UserError(f"the API server refused to {verb} {what}{where}: {status} {reason}")


def _status_message(exc: Exception) -> str:
    """The message of the Status the API server answered with ("" if none)."""
    import json

    try:
        return str(json.loads(getattr(exc, "body", None) or "{}").get("message") or "")
    except (ValueError, AttributeError):
        return ""


def _cut(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def call(fn, verb: str, resource: str, where: str | None, object_name: str | None = None,
         /, **kw):
    """fn(**kw), its API or connection failure said in one line (api_error)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn(**kw)
    except (ApiException, HTTPError) as exc:
        raise api_error(exc, verb, resource, where, object_name) from None

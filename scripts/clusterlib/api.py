"""The few API server requests scripts/cluster makes, with the admin client certificate (stdlib
urllib: the script needs no Kubernetes client library)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from tracer.terminal import visible


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        # The API server's message carries names anyone with access chose: one line, inert.
        super().__init__(f"{status}: {visible(message)}")
        self.status = status


class Api:
    def __init__(self, server: str, ca: Path, crt: Path, key: Path) -> None:
        self.server = server.rstrip("/")
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.ctx.load_cert_chain(str(crt), str(key))

    def request(self, method: str, path: str, body: dict | None = None,
                timeout: float = 10) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                text = json.loads(text).get("message", text)
            except ValueError:
                pass
            raise ApiError(exc.code, text) from None
        try:
            return json.loads(raw) if raw else {}
        except ValueError:  # /readyz and /healthz answer plain text
            return {"text": raw.decode(errors="replace")}

    def get(self, path: str) -> dict:
        return self.request("GET", path)

    def create(self, path: str, body: dict) -> dict:
        """POST; an object that is already there (409) is fine."""
        try:
            return self.request("POST", path, body)
        except ApiError as exc:
            if exc.status != 409:
                raise
            return {}

    def delete(self, path: str, body: dict | None = None) -> None:
        try:
            self.request("DELETE", path, body)
        except ApiError as exc:
            if exc.status != 404:
                raise

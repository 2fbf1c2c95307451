"""Delve backend: a headless dlv driven over JSON-RPC by an agent process."""

"""A fast "is this host reachable?" before a download that would otherwise hang on retries offline."""

from __future__ import annotations

import socket
import urllib.request


def unreachable(host: str, timeout_s: float, port: int = 443) -> OSError | None:
    """Why ``host``:``port`` cannot be reached, or None when it can.

    None too when an HTTPS proxy is configured: only the proxy knows what it can reach, so the
    download itself is left to find out. ``timeout_s`` bounds the connection; the name lookup before
    it takes as long as the system resolver does.
    """
    if urllib.request.getproxies().get("https"):
        return None
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        return e
    return None

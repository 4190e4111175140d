"""A fast "is this host reachable?" before a download that would otherwise hang on retries offline."""

from __future__ import annotations

import socket
import urllib.request


def unreachable(host: str, timeout_s: float, port: int = 443, scheme: str = "https") -> OSError | None:
    """Why ``host``:``port`` cannot be reached, or None when it can.

    None too when a download from it goes through a proxy (:func:`proxied`): only the proxy knows what
    it can reach, so the download itself is left to find out. ``timeout_s`` bounds the connection; the
    name lookup before it takes as long as the system resolver does.
    """
    if proxied(host, scheme):
        return None
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        return e
    return None


def proxied(host: str, scheme: str = "https") -> bool:
    """Whether the download libraries (requests, httpx, urllib) send a ``scheme`` request for ``host``
    through a proxy: ``<scheme>_proxy`` or ``all_proxy`` set (any case), and ``host`` not in
    ``no_proxy``. Only an HTTPS proxy counted before, so a machine behind ``ALL_PROXY`` was told it was
    offline."""
    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host)

"""The reachability check that the hf and openai sources run before a download."""

import pytest

from whisper_int8 import netcheck
from whisper_int8.audio import hf
from whisper_int8.audio.errors import AudioInputError

PROXY_VARIABLES = [f"{name}_proxy" for name in ("http", "https", "all", "no")]


@pytest.fixture
def no_proxy(monkeypatch):
    for proxy in PROXY_VARIABLES:
        monkeypatch.delenv(proxy, raising=False)
        monkeypatch.delenv(proxy.upper(), raising=False)


def test_an_unresolvable_host_is_unreachable(no_proxy):
    # A .invalid host never resolves (RFC 2606), so this holds on any machine, online or not.
    assert isinstance(netcheck.unreachable("offline.invalid", timeout_s=3), OSError)


def test_a_configured_https_proxy_leaves_the_check_to_the_download(no_proxy, monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert netcheck.unreachable("offline.invalid", timeout_s=3) is None


def test_all_proxy_and_no_proxy_are_read_as_the_download_libraries_read_them(no_proxy, monkeypatch):
    """Regression (a review): only an HTTPS proxy counted, so a machine behind ALL_PROXY (which requests
    and httpx use too) was told it was offline; a host in NO_PROXY is reached directly, so checked."""
    monkeypatch.setenv("ALL_PROXY", "http://proxy.invalid:3128")
    assert netcheck.unreachable("offline.invalid", timeout_s=3) is None
    monkeypatch.setenv("NO_PROXY", "offline.invalid")
    assert isinstance(netcheck.unreachable("offline.invalid", timeout_s=3), OSError)
    monkeypatch.delenv("ALL_PROXY")
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")  # an http:// mirror's proxy
    assert netcheck.unreachable("offline.invalid", timeout_s=3, port=80, scheme="http") is None
    assert isinstance(netcheck.unreachable("offline.invalid", timeout_s=3), OSError)  # not https's


def test_hf_offline_says_how_to_use_the_cache(monkeypatch):
    for flag in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(flag, raising=False)
    monkeypatch.setattr(
        hf, "unreachable", lambda host, timeout_s, port=443, scheme="https": OSError(f"{host}: no route")
    )
    cause = r"hf:google/fleurs: cannot reach huggingface.co .*HF_DATASETS_OFFLINE=1"
    with pytest.raises(AudioInputError, match=cause):
        hf._check_online("google/fleurs")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "yes")  # the user asked for the cache: no check
    hf._check_online("google/fleurs")


def test_a_host_that_accepts_the_connection_is_reachable(no_proxy, monkeypatch):
    """The online case, without a network: a connection that opens means None, and it is closed."""
    seen = []

    class Connection:
        def close(self):
            seen.append("closed")

    monkeypatch.setattr(
        netcheck.socket, "create_connection", lambda addr, timeout: seen.append(addr) or Connection()
    )
    assert netcheck.unreachable("huggingface.co", timeout_s=3) is None
    assert seen == [("huggingface.co", 443), "closed"]


def test_hf_checks_the_hub_that_hf_endpoint_names(no_proxy, monkeypatch):
    """Regression (a review): with HF_ENDPOINT set to a mirror (which datasets downloads from), the
    check asked huggingface.co:443 and refused the source where huggingface.co is out of reach."""
    import socket

    for flag in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)
    with socket.create_server(("127.0.0.1", 0)) as mirror:
        port = mirror.getsockname()[1]
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        hf._check_online("google/fleurs")  # the mirror accepts the connection: no error
    monkeypatch.setenv("HF_ENDPOINT", "https://offline.invalid")
    with pytest.raises(AudioInputError, match=r"cannot reach offline.invalid:443 \(HF_ENDPOINT\)"):
        hf._check_online("google/fleurs")

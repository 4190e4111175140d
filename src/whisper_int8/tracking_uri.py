"""Where MLflow keeps runs and models, a fast reachability check, and the MLflow-side user errors.

Kept free of ``import mlflow`` so the stage CLIs can list :class:`TrackingError` among their user errors
without paying for the MLflow import.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .fsutil import file_lock

SQLITE = "sqlite:///"
ENV_VARIABLE = "MLFLOW_TRACKING_URI"
DEFAULT_URI = SQLITE + "mlflow.db"
DEFAULT_ARTIFACT_ROOT = "mlruns"
# A tracking server keeps its own artifact store: a client-side folder would strand the artifacts.
REMOTE_SCHEMES = ("http://", "https://", "databricks")


class TrackingError(RuntimeError):
    """The MLflow tracking server or store cannot be used; the message names the URI and what to do."""


class RegistryError(RuntimeError):
    """A registered model, alias or version cannot be found; the message says which and what to do."""


def repo_root(root: Path | None = None) -> Path:
    """Where relative MLflow paths live: ``root``, else DVC's ``DVC_ROOT``, else the current directory.

    ``dvc exp run --temp`` / ``--queue`` run stages in a throw-away copy under ``.dvc/tmp/exps/``;
    DVC_ROOT then names the real repository, whose ``mlflow.db`` must receive the runs.
    """
    return root or Path(os.environ.get("DVC_ROOT") or Path.cwd())


def in_repository(path: Path) -> Path:
    """``path``, or a relative one found in the repository (:func:`repo_root`) when it is not here:
    ``dvc exp run --temp`` / ``--queue`` run a stage in a copy without untracked files, so a user's
    own audio folder or checkpoint named by a relative path is only in the repository."""
    if path.exists() or path.is_absolute():
        return path
    found = repo_root() / path
    return found if found.exists() else path


def resolve_tracking_uri(
    configured: str | None = None, root: Path | None = None, explicit: str | None = None
) -> str:
    """``explicit`` (a command-line flag) wins, then ``MLFLOW_TRACKING_URI``, then params
    ``mlflow.tracking_uri``, then ``sqlite:///mlflow.db``.

    A relative sqlite path is made absolute against :func:`repo_root` so every stage, experiment and
    the CLI agree on one database file wherever they are started from.
    """
    uri = explicit or os.environ.get(ENV_VARIABLE) or configured or DEFAULT_URI
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        path, query, options = uri[len(SQLITE) :].partition("?")
        uri = SQLITE + str((repo_root(root) / path).resolve()) + query + options
    return uri


def sqlite_file(uri: str) -> Path:
    """The database file of a ``sqlite:///`` URI, without SQLAlchemy's options (``?timeout=30``)."""
    return Path(uri[len(SQLITE) :].partition("?")[0])


@contextlib.contextmanager
def store_lock(uri: str, purpose: str, waiting: str) -> Iterator[None]:
    """Hold ``<db>.<purpose>.lock`` beside a sqlite store against other processes (``waiting``: logged
    when one makes this one wait); nothing for a tracking server, which has no such file."""
    if not uri.startswith(SQLITE):
        yield
        return
    db = sqlite_file(uri)
    with file_lock(db.with_name(f"{db.name}.{purpose}.lock"), waiting):
        yield


def setup_lock(uri: str) -> contextlib.AbstractContextManager[None]:
    """One process at a time creating a sqlite store's tables or an experiment in it (``<db>.setup.lock``).

    Two promotes opening a new ``mlflow.db`` at once (``dvc queue start -j 2``) each ran MLflow's schema
    migrations on it, and one failed (``duplicate column name``, an alembic error); two creating one new
    experiment, the second failed (``already exists``). The promote lock is not used: a promote holds it
    while it compares and moves the alias, and this lock only covers the store's setup.
    """
    return store_lock(uri, "setup", f"waiting for another process setting up {sqlite_file(uri)}")


def masked_uri(uri: str) -> str:
    """``uri`` with the password of ``https://user:password@host`` masked, and an http(s) server's lone
    user part (a token: ``https://<token>@host``; a database's is its user name): for logs and
    gate.json, which DVC pushes beside the metrics."""
    parts = urlsplit(uri)
    token = parts.password is None and parts.scheme in ("http", "https")
    if "@" not in parts.netloc or not (token or parts.password is not None):
        return uri
    host = parts.netloc.rpartition("@")[2]
    user = "***" if token else f"{parts.username}:***"
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def artifact_location(artifact_root: str | None, tracking_uri: str, root: Path | None = None) -> str | None:
    """Artifact location URI for a new experiment: ``mlruns/`` at the root by default, for a local store.

    For a tracking server (http(s), Databricks) None, so the server's own artifact store is used,
    unless ``artifact_root`` is itself a URI (``s3://...``).
    """
    if artifact_root and "://" in artifact_root:
        return artifact_root
    if tracking_uri.startswith(REMOTE_SCHEMES):
        return None
    return (repo_root(root) / (artifact_root or DEFAULT_ARTIFACT_ROOT)).resolve().as_uri()


def tracking_uri_source(
    configured: str | None, explicit: str | None = None, where: str = "params.yaml"
) -> str:
    """What gave the URI :func:`resolve_tracking_uri` returns for the same arguments: the thing to fix."""
    if explicit:
        return "--tracking-uri"
    if os.environ.get(ENV_VARIABLE):
        return ENV_VARIABLE
    return f"{where}: mlflow.tracking_uri" if configured else "the default"


def _tls_context() -> ssl.SSLContext:
    """The TLS checks MLflow's own client makes (``requests``): its ``MLFLOW_TRACKING_INSECURE_TLS``,
    ``MLFLOW_TRACKING_SERVER_CERT_PATH`` and ``MLFLOW_TRACKING_CLIENT_CERT_PATH``, else requests'
    ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``. A server with a private CA, which MLflow reaches
    with them, must not be called unreachable here."""
    env = os.environ.get
    ca = env("MLFLOW_TRACKING_SERVER_CERT_PATH") or env("REQUESTS_CA_BUNDLE") or env("CURL_CA_BUNDLE")
    client = env("MLFLOW_TRACKING_CLIENT_CERT_PATH")
    try:
        if env("MLFLOW_TRACKING_INSECURE_TLS", "").strip().lower() in ("true", "1"):
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        else:
            folder = ca is not None and os.path.isdir(ca)
            ctx = ssl.create_default_context(cafile=None if folder else ca, capath=ca if folder else None)
        if client:
            ctx.load_cert_chain(client)
    except OSError as e:  # ssl.SSLError too: a missing or unreadable certificate file
        raise TrackingError(
            f"TLS certificate {' / '.join(c for c in (ca, client) if c)} unusable ({e}); fix "
            "MLFLOW_TRACKING_SERVER_CERT_PATH / REQUESTS_CA_BUNDLE / MLFLOW_TRACKING_CLIENT_CERT_PATH"
        ) from None
    return ctx


def health_url(uri: str) -> str:
    """The server's ``/health``, without the user or password of ``https://user:password@host``:
    urllib takes ``user:password@host`` for the host name (a failed name lookup: every URI with
    credentials was "cannot be reached", a running server too), where MLflow's requests sends them as
    basic auth. The probe needs none: a 401 says the server is there."""
    parts = urlsplit(uri.rstrip("/"))
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], path=parts.path + "/health"))


def check_reachable(uri: str, timeout_s: float = 5.0, source: str = ENV_VARIABLE) -> None:
    """Fail fast with one clear line instead of MLflow's minutes of HTTP retries; ``source``
    (:func:`tracking_uri_source`) is what the message says to fix."""
    if uri.startswith(("http://", "https://")):
        url, server = health_url(uri), masked_uri(uri)
        context = _tls_context() if url.startswith("https://") else None
        try:
            with urllib.request.urlopen(url, timeout=timeout_s, context=context) as resp:
                if resp.status != 200:
                    raise TrackingError(
                        f"MLflow tracking server {server} answered HTTP {resp.status} on /health"
                    )
        except urllib.error.HTTPError as e:
            if e.code not in (401, 403):  # a server that wants credentials is there: MLflow sends them
                raise TrackingError(
                    f"MLflow tracking server {server} answered HTTP {e.code} ({e.reason}) on /health; "
                    "is it an MLflow server?"
                ) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            unset = (
                f", or unset {ENV_VARIABLE} to use the local {DEFAULT_URI}" if source == ENV_VARIABLE else ""
            )
            raise TrackingError(
                f"MLflow tracking server {server} cannot be reached ({reason}); start it, or fix "
                f"{source}{unset}"
            ) from None
    elif uri.startswith("sqlite:") and not uri.startswith(SQLITE):
        raise TrackingError(
            f"MLflow tracking URI {uri}: a sqlite URI names its file after three slashes: "
            f"{DEFAULT_URI} (relative to the repository) or sqlite:////abs/path/mlflow.db"
        )
    elif uri.startswith(SQLITE):
        db = sqlite_file(uri)
        if db.is_dir():
            raise TrackingError(f"MLflow tracking URI {uri}: {db} is a folder; name the database file")
        if not db.parent.is_dir():
            raise TrackingError(f"MLflow tracking URI {uri}: folder {db.parent} does not exist; create it")
    elif uri.startswith("file:") or ("://" not in uri and not uri.startswith(REMOTE_SCHEMES)):
        raise TrackingError(
            f"MLflow tracking URI {uri}: a bare file store is refused by MLflow >= 3.13; "
            f"use {DEFAULT_URI} or an http(s):// server"
        )

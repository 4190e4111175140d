"""Read ``params.yaml`` and report bad values with the exact key and what to do."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml


class ParamError(ValueError):
    """A value in params.yaml is missing or invalid; the message names the key."""


def load_params(path: Path | str = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path}: parameter file not found; run from the repository root or pass --params")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ParamError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ParamError(f"{path}: expected a mapping of sections at the top level")
    return data


def reject_unknown_keys(
    mapping: dict[str, Any], name: str, allowed: set[str], path: Path | str = "params.yaml"
) -> None:
    """Raise naming every key of section ``name`` not in ``allowed``: a typo must not fall back to
    the default silently."""
    unknown = sorted(str(k) for k in set(mapping) - allowed)
    if unknown:
        raise ParamError(f"{path}: unknown {name} key(s) {unknown}; allowed: {', '.join(sorted(allowed))}")


def null_or_count(value: Any, key: str, null_means: str, path: Path | str = "params.yaml") -> int | None:
    """``value`` when it is null or an integer >= 1; otherwise raise naming ``key`` and what null means."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ParamError(f"{path}: {key}={value!r} must be null ({null_means}) or an integer >= 1")
    return value


def section(params: dict[str, Any], name: str, path: Path | str = "params.yaml") -> dict[str, Any]:
    """Return ``params[name]`` as a dict, or raise naming the missing section."""
    value = params.get(name)
    if not isinstance(value, dict):
        raise ParamError(f"{path}: section {name!r} is missing or not a mapping")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a beam of 0 or a negative cap is a usage error, not a crash)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1")
    return value

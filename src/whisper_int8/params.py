"""Read ``params.yaml`` and report bad values with the exact key and what to do."""

from __future__ import annotations

import argparse
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml


class ParamError(ValueError):
    """A value in params.yaml is missing or invalid; the message names the key."""


# the pipeline's sections; a params.yaml shared with other stages may hold more (DVC's convention)
SECTIONS = ("model", "audio", "evaluate", "gate", "mlflow", "calibrate", "quant")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys without a word: a second ``seed:`` or ``quant:`` block
    pasted below the first would silently replace it."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: merged below, not a key
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # SafeLoader refuses it below, with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}: keep one of them", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


# Booleans as YAML 1.2 has them (true/false), the way DVC reads, diffs and rewrites this file: PyYAML's
# YAML 1.1 also takes yes/no/on/off, and `dvc exp run -S <any key>` writes the file back with a quoted
# 'no' (Norwegian) unquoted, which the stages then read as false while DVC records "no".
# Numbers too: YAML 1.1 reads `010` as eight (DVC: ten) and `1:30` as 90 (DVC: a string, which
# `dvc exp run -S` writes back unquoted), and takes neither `5e-1` nor `1e3` for a number. The patterns
# are ruamel.yaml's for YAML 1.2, the parser DVC reads params.yaml with.
_BOOL, _INT, _FLOAT = (f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float"))
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_UniqueKeyLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
_UniqueKeyLoader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0o?[0-7_]+|[-+]?[0-9_]+|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """A YAML 1.2 integer: a leading zero is no octal (``010`` is ten), ``0o`` is."""
    text = str(loader.construct_scalar(node)).replace("_", "")
    sign, digits = (-1 if text.startswith("-") else 1), text.lstrip("+-")
    base = {"0b": 2, "0o": 8, "0x": 16}.get(digits[:2])
    return sign * (int(digits[2:], base) if base else int(digits))


def _digits_required(construct):
    """The patterns (ruamel's, as DVC has them) take underscores for digits, so ``0x_``, ``-_`` and
    ``._`` resolve to numbers with no digit: refused at their line, not a ValueError traceback."""

    def checked(loader: yaml.SafeLoader, node: yaml.ScalarNode):
        try:
            return construct(loader, node)
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"{node.value!r} is a number without digits; write one, or quote text",
                node.start_mark,
            ) from None

    return checked


_UniqueKeyLoader.add_constructor(_INT, _digits_required(_construct_int))
_UniqueKeyLoader.add_constructor(_FLOAT, _digits_required(yaml.SafeLoader.construct_yaml_float))


def _one_edit_apart(a: str, b: str) -> bool:
    """One letter added, dropped, changed, or two neighbours swapped (quantt, quan, qaunt)."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return (
        a[i + 1 :] == b[i + 1 :]
        or a[i + 1 :] == b[i:]
        or a[i:] == b[i + 1 :]
        or (a[i : i + 2] == b[i : i + 2][::-1] and a[i + 2 :] == b[i + 2 :])
    )


def yaml_value(text: str) -> Any:
    """One value written on a command line (``--values 7 8``, ``true``), read as params.yaml is read."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def load_params(path: Path | str = "params.yaml", sections: bool = True) -> dict[str, Any]:
    """The parameter file as a dict. ``sections``: refuse a top-level key that looks like a mistyped
    section (``quantt:``), whose settings would otherwise be ignored for the defaults."""
    path = Path(path)
    if not path.is_file():
        raise ParamError(f"{path}: parameter file not found; run from the repository root or pass --params")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as e:
        raise ParamError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except yaml.MarkedYAMLError as e:  # one line, as an editor takes it: file:line:column
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(filter(None, (e.context, e.problem)))
        raise ParamError(f"{where}: not valid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise ParamError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ParamError(f"{path}: expected a mapping of sections at the top level")
    for key in data if sections else ():
        # a pipeline section missing and a key one letter away from it; `evaluation:` beside
        # `evaluate:` is a section of the user's own
        near = [s for s in SECTIONS if s not in data and _one_edit_apart(str(key), s)]
        if key not in SECTIONS and near:
            known = ", ".join(SECTIONS)
            raise ParamError(f"{path}: unknown section {key!r}; did you mean {near[0]!r}? ({known})")
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


# the most one 30 s window decodes: half of every Whisper model's 448-token text context (here, not in
# transcribe.py, so the CLI checks --max-tokens without importing torch)
WINDOW_TOKENS = 224


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a beam of 0 or a negative cap is a usage error, not a crash)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer >= 1")
    return value


def window_token_cap(text: str) -> int:
    """argparse type of ``--max-tokens``: 1 to :data:`WINDOW_TOKENS`, as ``evaluate.max_tokens`` takes it
    (a larger cap decoded as 224 without a word)."""
    value = positive_int(text)
    if value > WINDOW_TOKENS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: at most {WINDOW_TOKENS}, the most a 30 s window decodes (half of Whisper's 448-token "
            "text context)"
        )
    return value

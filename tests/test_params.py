"""params.yaml reading: the mistakes YAML itself lets through are refused with the file and the key."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, venv_env
from whisper_int8.params import ParamError, load_params, section

GOOD = (REPO / "params.yaml").read_text(encoding="utf-8")


def test_the_repository_params_load(tmp_path):
    assert {"audio", "quant", "gate"} <= set(load_params(REPO / "params.yaml"))


def test_a_duplicate_key_is_refused_naming_it(tmp_path):
    """Regression: a second `seed:` silently won (all Kokoro clips synthesized again); a second
    `audio:` block gave 'audio.sources is missing'."""
    path = tmp_path / "params.yaml"
    path.write_text(GOOD.replace("  seed: 0 ", "  seed: 7\n  seed: 0 ", 1))
    assert "  seed: 7\n  seed: 0" in path.read_text()
    with pytest.raises(ParamError, match=r"params.yaml:16:3: not valid YAML: duplicate key 'seed': keep one"):
        load_params(path)
    path.write_text(GOOD + "audio:\n  seed: 1\n")
    with pytest.raises(ParamError, match=r"params.yaml:\d+:1: not valid YAML: duplicate key 'audio'"):
        load_params(path)
    path.write_text("a: {x: 1, y: 2}\nb: [{x: 1}, {x: 2}]\n")  # equal keys in different mappings: fine
    assert load_params(path, sections=False) == {"a": {"x": 1, "y": 2}, "b": [{"x": 1}, {"x": 2}]}


def test_a_yaml_error_is_one_line_naming_the_place(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("audio:\n  seed: [0\n")
    message = r"params.yaml:3:1: not valid YAML: while parsing a flow sequence"
    with pytest.raises(ParamError, match=message) as e:
        load_params(path)
    assert "\n" not in str(e.value)


def test_a_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"# caf\xe9\n" + GOOD.encode())
    with pytest.raises(ParamError, match=r"params.yaml: not UTF-8 text \(byte 5\); save it as UTF-8"):
        load_params(path)


def test_a_mistyped_section_is_refused_and_other_sections_are_left_alone(tmp_path):
    """Regression: `quantt:` was ignored and convert used the code's defaults (66 int8 layers, not 64)."""
    path = tmp_path / "params.yaml"
    path.write_text(GOOD.replace("\nquant:", "\nquantt:", 1))
    with pytest.raises(ParamError, match=r"unknown section 'quantt'; did you mean 'quant'\?"):
        load_params(path)
    assert "quantt" in load_params(path, sections=False)  # the CLI reads another project's file so
    path.write_text(GOOD + "export:\n  format: onnx\n")  # a stage of the user's own
    assert load_params(path)["export"] == {"format": "onnx"}


def test_convert_needs_its_quant_section(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(GOOD.replace("\nquant:", "\nnot_quant:", 1))
    cmd = [sys.executable, str(REPO / "stages" / "convert.py"), "--params", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=venv_env(), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: {path}: section 'quant' is missing or not a mapping"


def test_yaml_merge_keys_and_sections_of_the_users_own_are_read(tmp_path):
    """Regression: the duplicate-key loader refused `<<: *defaults` (safe_load and DVC take it), and a
    section named like one of ours (`evaluation:` beside `evaluate:`) was taken for a typo."""
    path = tmp_path / "params.yaml"
    path.write_text(GOOD + "base: &b {seed: 3}\nevaluation: {<<: *b, split: other}\nmodels: [a, b]\n")
    data = load_params(path)
    assert data["evaluation"] == {"seed": 3, "split": "other"} and data["models"] == ["a", "b"]
    path.write_text("base: &b {seed: 3}\nx: {<<: *b, seed: 4}\n")  # an override of a merged key: fine
    assert load_params(path)["x"] == {"seed": 4}


def test_a_quoted_no_that_dvc_exp_run_set_rewrote_is_still_norwegian(tmp_path):
    """Regression: `dvc exp run -S <any key>` writes params.yaml back with 'no' unquoted (YAML 1.2, where
    only true/false are booleans); the stages read it as YAML 1.1's false, so fetch_audio refused the
    quoted code and promote refused the model for "languages without results: False"."""
    from dvc.utils.serialize import modify_yaml, parse_yaml

    path = tmp_path / "params.yaml"
    path.write_text(GOOD.replace("languages: [en, es,", "languages: [en, 'no', es,", 1))
    with modify_yaml(path) as data:  # what `dvc exp run -S audio.seed=1` does to the file
        data["audio"]["seed"] = 1
    assert "languages: [en, no, es," in path.read_text()  # unquoted
    languages = load_params(path)["audio"]["languages"]
    assert (
        languages[:2] == ["en", "no"]
        and languages == parse_yaml(path.read_text(), path)["audio"]["languages"]
    )
    assert load_params(path)["quant"]["per_token"] is True  # true/false stay booleans


def test_numbers_are_read_as_dvc_reads_them(tmp_path):
    """Regression: the stages read numbers by YAML 1.1, DVC (and `dvc exp show`, `dvc params diff`) by
    YAML 1.2: `auto_keep_float_k: 010` converted with 8 float layers while DVC recorded 10,
    `smoothquant_alpha: 5e-1` was refused as "expected ... a number", and a quoted '1:30' that
    `dvc exp run -S` wrote back unquoted became 90."""
    from dvc.utils.serialize import modify_yaml, parse_yaml

    scalars = ["010", "-010", "0o17", "0x1F", "0b101", "1_000", "5e-1", "1e3", "1.0e3", "+.5", "-.5",
               "9.999e1", ".inf", "-.inf", "0", "7", "0.5", "'1:30'", "1:30", "2"]  # fmt: skip
    path = tmp_path / "params.yaml"
    path.write_text("x:\n" + "".join(f"  k{i}: {s}\n" for i, s in enumerate(scalars)))
    with modify_yaml(path) as data:  # what `dvc exp run -S x.k19=3` does to the file
        data["x"]["k19"] = 3
    ours, dvc = load_params(path, sections=False)["x"], parse_yaml(path.read_text(), path)["x"]
    assert ours == dvc
    assert {k: type(v) for k, v in ours.items()} == {k: type(v) for k, v in dvc.items()}
    assert (ours["k0"], ours["k6"], ours["k17"]) == (10, 0.5, "1:30")


@pytest.mark.parametrize("scalar", ["0x_", "0b_", "0o_", "-_", "._", "-._"])
def test_a_number_without_digits_is_refused_at_its_line(tmp_path, scalar):
    """YAML 1.2's patterns take underscores for digits, so these resolve to numbers that have none:
    a ValueError traceback until they were refused like any other YAML error (DVC's parser fails too)."""
    path = tmp_path / "params.yaml"
    path.write_text(f"audio:\n  seed: {scalar}\n")
    with pytest.raises(
        ParamError, match=rf"params.yaml:2:9: not valid YAML: '{re.escape(scalar)}' is a number without"
    ):
        load_params(path)


@pytest.mark.parametrize("typo", ["quantt", "quaant", "quan", "qunt", "quamt", "qaunt"])
def test_a_section_one_edit_away_is_refused_whatever_the_edit(tmp_path, typo):
    """A letter added or dropped (at the end or inside), changed, or two swapped: each would leave
    `quant:` to the defaults."""
    path = tmp_path / "params.yaml"
    path.write_text(GOOD.replace("\nquant:", f"\n{typo}:", 1))
    with pytest.raises(ParamError, match=rf"unknown section '{typo}'; did you mean 'quant'\?"):
        load_params(path)


@pytest.mark.parametrize("text", ["- quant\n- audio\n", "quant\n"])
def test_a_file_that_is_not_a_mapping_of_sections_is_refused(tmp_path, text):
    """Not a traceback from the first stage that looks a section up."""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamError, match=r"params.yaml: expected a mapping of sections at the top level$"):
        load_params(path)


@pytest.mark.parametrize("value", [None, 5, "dynamic", ["scheme", "static"]])
def test_a_section_that_is_not_a_mapping_is_refused_naming_it(value):
    """`calibrate: 5` would otherwise fail in the stage with "'int' object has no attribute 'get'"."""
    with pytest.raises(ParamError, match=r"^p.yaml: section 'calibrate' is missing or not a mapping$"):
        section({"calibrate": value}, "calibrate", "p.yaml")
    assert section({"calibrate": {}}, "calibrate") == {}

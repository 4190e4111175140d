"""Every quant param is validated with an error that names the key."""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from whisper_int8.params import ParamError, load_params
from whisper_int8.quant.config import DEFAULTS, parse_quant_config, resolve_backend


def test_defaults():
    cfg = parse_quant_config({})
    assert cfg.to_dict() == DEFAULTS
    assert parse_quant_config(None) == cfg


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("scheme", "int4"),
        ("scheme", None),
        ("per_channel", "yes"),
        ("per_channel", 1),
        ("per_token", "true"),
        ("per_token", 0),
        ("smoothquant_alpha", 1.5),
        ("smoothquant_alpha", -0.1),
        ("smoothquant_alpha", "0.5"),
        ("smoothquant_alpha", True),
        ("keep_float", "decoder.*"),
        ("keep_float", [""]),
        ("keep_float", [3]),
        ("auto_keep_float_k", -1),
        ("auto_keep_float_k", 1.5),
        ("auto_keep_float_k", True),
        ("outlier_channels", -1),
        ("outlier_channels", 2.5),
        ("outlier_channels", False),
        ("outlier_layers", "*.mlp.2"),
        ("outlier_layers", [""]),
        ("quantize_embedding", "true"),
        ("backend", "tensorrt"),
        ("cross_kv_dtype", "bfloat16"),
        ("cross_kv_dtype", None),
        ("weight_bits", 6),
        ("weight_bits", "7"),
        ("weight_bits", True),
        ("weight_bits", 7.5),
        ("weight_bits", 8.0),  # (a review) passed, and was written into quant_config.json as 8.0
    ],
)
def test_bad_values_name_the_file_and_the_key(key, value):
    with pytest.raises(ParamError, match=rf"^elsewhere\.yaml: quant\.{key}"):
        parse_quant_config({key: value}, "elsewhere.yaml")


def test_a_bad_flag_names_the_file_and_the_choices():
    with pytest.raises(ParamError, match=r"^p\.yaml: quant\.per_channel='yes': expected true or false$"):
        parse_quant_config({"per_channel": "yes"}, "p.yaml")


def test_the_file_is_remembered_for_the_conversion_but_is_not_a_setting():
    cfg = parse_quant_config({}, "elsewhere.yaml")
    assert cfg.where == "elsewhere.yaml" and parse_quant_config({}).where == "params.yaml"
    assert cfg == parse_quant_config({}) and cfg.to_dict() == DEFAULTS  # quant_config.json unchanged


def test_outliers_need_quantized_activations():
    with pytest.raises(ParamError, match=r"quant\.outlier_channels=16 needs quantized activations"):
        parse_quant_config({"scheme": "weight_only", "outlier_channels": 16})
    assert parse_quant_config({"scheme": "weight_only"}).outlier_channels == 0


def test_a_section_that_is_not_a_mapping_is_refused():
    for raw in ("dynamic", [["scheme", "static"]]):  # a list of pairs must not pass for a mapping
        with pytest.raises(ParamError, match="quant: expected a mapping of keys"):
            parse_quant_config(raw)


def test_static_on_torchao_is_refused_as_no_device_could_load_it():
    with pytest.raises(ParamError, match=r"quant\.scheme=static .* quant\.backend=torchao"):
        parse_quant_config({"scheme": "static", "backend": "torchao"})
    assert parse_quant_config({"scheme": "dynamic", "backend": "torchao"}).backend == "torchao"


def test_unknown_key():
    with pytest.raises(ParamError, match="unknown quant key.*'sheme'"):
        parse_quant_config({"sheme": "dynamic"})


def test_good_values():
    cfg = parse_quant_config(
        {"scheme": "static", "per_channel": False, "smoothquant_alpha": 0, "keep_float": ["encoder.*"],
         "auto_keep_float_k": 2, "quantize_embedding": False, "backend": "fbgemm"}
    )  # fmt: skip
    assert cfg.smoothquant_alpha == 0.0 and cfg.keep_float == ["encoder.*"] and cfg.auto_keep_float_k == 2


def test_backend_resolution():
    assert resolve_backend("auto", "cpu") == "x86"
    assert resolve_backend("auto", "cuda:0") == "torchao"
    with pytest.raises(ParamError, match="CPU only"):
        resolve_backend("fbgemm", "cuda")
    with pytest.raises(ParamError, match="needs a CUDA device"):
        resolve_backend("torchao", "cpu")


# the README's choices, written out: taken from SCHEMES and the like, a choice dropped there drops here too
DOCUMENTED = {
    "scheme": ["dynamic", "static", "weight_only"],
    "backend": ["auto", "x86", "fbgemm", "torchao"],
    "cross_kv_dtype": ["float16", "float32"],
    "weight_bits": [7, 8],
    "smoothquant_alpha": [0, 0.0, 1, 1.0],  # both ends of [0, 1]
}


@pytest.mark.parametrize(("key", "value"), [(k, v) for k, values in DOCUMENTED.items() for v in values])
def test_every_documented_choice_and_bound_is_accepted(key, value):
    assert getattr(parse_quant_config({key: value}), key) == value


@pytest.mark.parametrize("key", ["keep_float", "outlier_layers"])
def test_an_empty_pattern_list_may_be_left_null(key):
    """`keep_float:` with its entries commented out is YAML's null: no patterns, not an error."""
    assert getattr(parse_quant_config({key: None}), key) == []


def test_a_key_left_out_takes_the_default_the_readme_gives():
    """README: a key left out takes the code default, "which differs only for auto_keep_float_k: 0"
    from the repository's params.yaml."""
    repo = load_params(REPO / "params.yaml")["quant"]
    assert {**repo, "auto_keep_float_k": 0} == DEFAULTS and repo["auto_keep_float_k"] != 0


def test_the_file_a_config_came_from_is_no_key():
    """``where`` is a field of the config but no setting: `where:` in quant: would rename the file
    every error of the conversion names."""
    with pytest.raises(ParamError, match=r"unknown quant key\(s\) \['where'\]"):
        parse_quant_config({"where": "other.yaml"})


def test_a_cpu_backend_is_refused_on_cuda():
    for backend in ("x86", "fbgemm"):
        with pytest.raises(ParamError, match=rf"quant.backend='{backend}' runs on CPU only"):
            resolve_backend(backend, "cuda:1")
        assert resolve_backend(backend, "cpu") == backend

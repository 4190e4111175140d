"""`dvc repro` runs fuse -> calibrate -> convert on a throw-away repository (tiny model, tiny split)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from whisper_int8.fsutil import sha256_file
from whisper_int8.model_dir import load_model_dir
from whisper_int8.model_sources import LoadedModel, save_checkpoint

from .conftest import make_tiny_whisper, run_dvc, venv_env
from .test_calibrate import write_split


@pytest.mark.integration
def test_dvc_repro_fuse_calibrate_convert(dvc_repo):
    model = make_tiny_whisper()
    (dvc_repo / "models" / "fp32").mkdir(parents=True)
    save_checkpoint(dvc_repo / "models" / "fp32" / "model.pt", LoadedModel(model, model.dims, None))
    write_split(dvc_repo / "data" / "calibration")
    run_dvc(dvc_repo, "repro", "--single-item", "fuse", "calibrate", "convert")
    outs = ["models/fused/fused.pt", "models/int8/int8.pt", "models/int8/quant_config.json"]
    outs += [f"models/calibration/{f}" for f in ("sensitivity.json", "coverage.json", "stats.pt")]
    for out in outs:
        assert (dvc_repo / out).is_file(), out
    card = json.loads((dvc_repo / "models/int8/model_card.json").read_text())
    # params.yaml keeps the 2 most sensitive layers (Linear or the embedding) in float
    assert card["int8_linear"] + card["float_linear"] == 22 and card["scheme"] == "dynamic"
    assert card["float_linear"] + card["float_embedding"] == 2
    assert load_model_dir(dvc_repo / "models" / "int8").dims == model.dims
    status = run_dvc(dvc_repo, "status", "fuse", "calibrate", "convert").stdout
    assert "changed" not in status, status
    # the FP32 checkpoint each model was made from, recorded on the way; another one in models/fp32
    # (fetched again by hand) stops the conversion instead of giving it the wrong FP32 size
    fp32 = dvc_repo / "models" / "fp32" / "model.pt"
    digest = sha256_file(fp32)
    for stage in ("fused", "int8"):
        assert json.loads((dvc_repo / f"models/{stage}/model_card.json").read_text())["fp32_sha256"] == digest
    kept = fp32.read_bytes()
    other = make_tiny_whisper(seed=1)
    save_checkpoint(fp32, LoadedModel(other, other.dims, None))
    proc = subprocess.run(
        [sys.executable, "stages/convert.py"], cwd=dvc_repo, env=venv_env(), capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    assert "models/fused was made from another FP32 model than models/fp32" in proc.stderr
    fp32.write_bytes(kept)
    # a bad quant param: the stage script exits 2 with one clear line and leaves models/int8 intact
    params = (dvc_repo / "params.yaml").read_text().replace("scheme: dynamic", "scheme: int4")
    (dvc_repo / "params.yaml").write_text(params)
    before = (dvc_repo / "models/int8/int8.pt").read_bytes()
    proc = subprocess.run(
        [sys.executable, "stages/convert.py"], cwd=dvc_repo, env=venv_env(), capture_output=True, text=True
    )
    assert proc.returncode == 2 and "quant.scheme='int4'" in proc.stderr, proc.stderr
    assert (dvc_repo / "models/int8/int8.pt").read_bytes() == before
    proc = run_dvc(dvc_repo, "repro", "--single-item", "convert", check=False)
    assert proc.returncode != 0 and "quant.scheme='int4'" in proc.stdout + proc.stderr

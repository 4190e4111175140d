"""Reports name the CPU and the kernel ISA torch runs (which a cap lowers); the int8 activation bits
follow the CPU and the weights' bits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from whisper_int8 import cpu


def test_host_summary_names_model_cores_and_the_isa_torch_dispatches_to():
    line = cpu.host_summary()
    assert line.startswith(f"{cpu.cpu_model()}; {os.cpu_count()} cpus; {torch.get_num_threads()} threads")
    assert f"ISA {torch.backends.cpu.get_cpu_capability()}" in line
    assert set(cpu.cpu_extensions()) <= set(cpu.EXTENSIONS)


def test_avx2_cap_lowers_what_torch_dispatches_to_in_a_new_process():
    code = "from whisper_int8.cpu import host_summary; print(host_summary())"
    env = {**os.environ, **cpu.ISA_CAPS["avx2"]}
    line = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert " ISA AVX2 " in line.stdout


def test_extensions_come_from_proc_cpuinfo(monkeypatch):
    lines = ["model name\t: Test CPU", "flags\t\t: fpu sse avx2 fma avx512f avx512_vnni"]
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: lines)
    assert cpu.cpu_model() == "Test CPU"
    assert cpu.cpu_extensions() == ["avx2", "fma", "avx512f", "avx512_vnni"]
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: [])
    assert cpu.cpu_extensions() == [] and cpu.cpu_model()  # the architecture where there is no cpuinfo


def test_activation_bits_follow_fbgemm_vnni_and_the_override(monkeypatch):
    monkeypatch.delenv("FBGEMM_ENABLE_INSTRUCTIONS", raising=False)
    monkeypatch.delenv(cpu.ACTIVATION_BITS_ENV, raising=False)
    monkeypatch.setattr(cpu, "cpu_extensions", lambda: ["avx2", "avx512f", "avx512_vnni"])
    assert cpu.fbgemm_vnni() and cpu.activation_bits() == 8
    assert cpu.activation_bits(weight_bits=7) == 8
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2")  # capped below VNNI: saturation-safe 7 bits
    assert not cpu.fbgemm_vnni() and cpu.activation_bits() == 7
    assert cpu.activation_bits(weight_bits=7) == 8  # 7-bit weights: no int16 sum saturates
    monkeypatch.delenv("FBGEMM_ENABLE_INSTRUCTIONS")
    monkeypatch.setenv(cpu.ACTIVATION_BITS_ENV, "7")
    assert cpu.activation_bits() == 7 and cpu.activation_bits(weight_bits=7) == 7
    monkeypatch.setattr(cpu, "cpu_extensions", lambda: ["avx2", "fma"])
    monkeypatch.setenv(cpu.ACTIVATION_BITS_ENV, "auto")
    assert cpu.activation_bits() == 7 and cpu.activation_bits(weight_bits=7) == 8
    monkeypatch.setenv(cpu.ACTIVATION_BITS_ENV, "8")
    assert cpu.activation_bits(weight_bits=7) == 8
    with pytest.raises(
        cpu.ActivationBitsError,
        match="ACTIVATION_BITS=8: .* beside 8-bit weights need fbgemm's AVX-512 VNNI.*weight_bits: 7",
    ):
        cpu.activation_bits()
    monkeypatch.setenv(cpu.ACTIVATION_BITS_ENV, "16")
    with pytest.raises(cpu.ActivationBitsError, match="WHISPER_INT8_ACTIVATION_BITS='16': use auto, 7 or 8"):
        cpu.activation_bits()


def test_the_weight_bits_are_read_from_the_codes_and_pick_the_activation_bits():
    from whisper_int8.quant import cpu as qcpu

    lin = torch.nn.Linear(64, 32)
    w7 = qcpu.DynamicInt8Linear.from_float(lin, per_channel=True, bits=7)
    w8 = qcpu.DynamicInt8Linear.from_float(lin, per_channel=True)
    assert w7.weight_bits == 7 and int(w7.int8_weight()[0].abs().amax()) == 64
    assert w8.weight_bits == 8 and int(w8.int8_weight()[0].abs().amax()) == 127
    loaded = qcpu.DynamicInt8Linear(64, 32, True, True)
    loaded.load_state_dict(w7.state_dict())
    assert loaded.weight_bits == 7  # a saved model keeps what its codes allow
    codes = torch.zeros(2, 2, dtype=torch.int8)
    assert qcpu.code_bits(codes.fill_(-64)) == 7 and qcpu.code_bits(codes.fill_(-65)) == 8
    assert qcpu.code_bits(codes.fill_(-128)) == 8  # |-128| does not fit int8: no abs() here
    emb = qcpu.Int8TiedEmbedding.from_float(torch.nn.Embedding(100, 16), bits=7)
    assert emb.weight_bits == 7 and int(emb.weight_int8.abs().amax()) == 64
    for bits in (7, 8):
        assert qcpu._reduce_range(bits) == (cpu.activation_bits(bits) == 7)


# One 7-bit-weight and one 8-bit-weight layer, run on the native kernels or capped at AVX2 (the kernels
# of a CPU without VNNI); 8-bit activations forced onto the 8-bit weights (reduce_range False).
_BITS_PROBE = """
import json, torch
from whisper_int8.cpu import activation_bits
from whisper_int8.quant import cpu as q
torch.backends.quantized.engine = "x86"
torch.manual_seed(0)
lin = torch.nn.Linear(512, 256)
x = torch.randn(300, 512) * torch.rand(512) * 4
x[:, :8] = 40.0  # a few loud channels: their products with large weights fill the int16 pair sums
ref = lin(x)
w7 = q.DynamicInt8Linear.from_float(lin, per_channel=True, bits=7)
w8 = q.DynamicInt8Linear.from_float(lin, per_channel=True)
forced = torch.ops.quantized.linear_dynamic(x, w8._packed, False) + lin.bias
err = lambda y: float((y - ref).norm() / ref.norm())
print(json.dumps({"w7": w7(x).flatten()[:2000].tolist(), "err_w7": err(w7(x)), "err_w8": err(w8(x)),
                  "err_w8_a8": err(forced), "bits": [activation_bits(7), activation_bits(8)]}))
"""


def test_7_bit_weights_take_8_bit_activations_and_compute_the_same_with_or_without_vnni():
    """quant.weight_bits 7: fbgemm's AVX2 kernels (no VNNI) give 8-bit activations without saturating,
    the values of the VNNI kernels; 8-bit weights there need 7-bit activations (8 would saturate)."""
    import json

    from .conftest import venv_env

    def probe(env: dict) -> dict:
        done = subprocess.run(
            [sys.executable, "-c", _BITS_PROBE], env={**venv_env(), **env}, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    native, capped = probe({}), probe(cpu.ISA_CAPS["avx2"])
    assert capped["bits"] == [8, 7]
    assert capped["w7"] == native["w7"]  # the same values on every x86 CPU
    assert capped["err_w7"] < capped["err_w8"]  # 8-bit activations beat 8-bit weights here
    assert capped["err_w8_a8"] > 5 * capped["err_w8"]  # why 8-bit weights take 7-bit activations there


@pytest.mark.skipif(not cpu.fbgemm_vnni(), reason="needs fbgemm's AVX-512 VNNI kernels")
def test_8_bit_activations_are_closer_to_float_where_vnni_runs_them():
    """Why 8-bit weights take 8-bit activations on VNNI: the 8th bit halves the activation rounding."""
    from whisper_int8.quant import cpu as qcpu

    torch.manual_seed(0)
    lin = torch.nn.Linear(512, 512)
    x = torch.randn(64, 512) * torch.rand(512) * 4  # channels of different ranges, as in Whisper
    q = qcpu.DynamicInt8Linear.from_float(lin, per_channel=True)
    ref = lin(x)
    err8 = float((q(x) - ref).norm() / ref.norm())
    err7 = float((torch.ops.quantized.linear_dynamic(x, q._packed, True) - ref).norm() / ref.norm())
    assert err8 < 0.75 * err7


def test_a_bad_activation_bits_setting_is_one_line_where_int8_runs(tmp_path):
    """Not an import-time traceback (the quant module read it when loaded, even for FP32 work): the
    stages and the CLI stop with the variable's message, exit 2."""

    from .conftest import venv_env
    from .eval_fixtures import tiny_int8_dir
    from .test_audio_wavio import write_tone

    env = {**venv_env(), "WHISPER_INT8_ACTIVATION_BITS": "9"}
    code = "import whisper_int8.quant.cpu, whisper_int8.model_dir; print('imported')"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "imported\n", done.stderr
    wav = write_tone(tmp_path / "a.wav", 440, 1.0)
    cmd = [str(Path(sys.executable).parent / "whisper-int8"), "transcribe", "--model"]
    cmd += [str(tiny_int8_dir(tmp_path / "int8")), "--language", "en", str(wav)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr == "error: WHISPER_INT8_ACTIVATION_BITS='9': use auto, 7 or 8\n"

"""Reports name the CPU, the kernel ISA torch runs (which a cap lowers) and the int8 activation bits."""

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
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2")  # capped below VNNI: saturation-safe 7 bits
    assert not cpu.fbgemm_vnni() and cpu.activation_bits() == 7
    monkeypatch.delenv("FBGEMM_ENABLE_INSTRUCTIONS")
    monkeypatch.setenv(cpu.ACTIVATION_BITS_ENV, "7")
    assert cpu.activation_bits() == 7
    monkeypatch.setattr(cpu, "cpu_extensions", lambda: ["avx2", "fma"])
    monkeypatch.setenv(cpu.ACTIVATION_BITS_ENV, "auto")
    assert cpu.activation_bits() == 7
    monkeypatch.setenv(cpu.ACTIVATION_BITS_ENV, "8")
    with pytest.raises(
        cpu.ActivationBitsError, match="WHISPER_INT8_ACTIVATION_BITS=8: .* need fbgemm's AVX-512 VNNI"
    ):
        cpu.activation_bits()
    monkeypatch.setenv(cpu.ACTIVATION_BITS_ENV, "16")
    with pytest.raises(cpu.ActivationBitsError, match="WHISPER_INT8_ACTIVATION_BITS='16': use auto, 7 or 8"):
        cpu.activation_bits()


def test_host_summary_names_the_activation_bits():
    assert cpu.host_summary().endswith(f"; int8 activations {cpu.activation_bits()}-bit")


def test_portable_activations_pins_7_bits_and_restores():
    from whisper_int8.quant import cpu as qcpu

    before = qcpu._reduce_range()
    assert before == (cpu.activation_bits() == 7)
    with qcpu.portable_activations():
        assert qcpu._reduce_range() is True
    assert before == qcpu._reduce_range()


@pytest.mark.skipif(not cpu.fbgemm_vnni(), reason="needs fbgemm's AVX-512 VNNI kernels")
def test_8_bit_activations_are_closer_to_float_where_vnni_runs_them():
    """The reason for the default: on VNNI the 8th bit halves the activation rounding, no saturation."""
    from whisper_int8.quant import cpu as qcpu

    torch.manual_seed(0)
    lin = torch.nn.Linear(512, 512)
    x = torch.randn(64, 512) * torch.rand(512) * 4  # channels of different ranges, as in Whisper
    q = qcpu.DynamicInt8Linear.from_float(lin, per_channel=True)
    ref = lin(x)
    err8 = float((q(x) - ref).norm() / ref.norm())
    with qcpu.portable_activations():
        err7 = float((q(x) - ref).norm() / ref.norm())
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

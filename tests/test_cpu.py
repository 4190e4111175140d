"""The host line of reports names the CPU and the kernel ISA torch runs, which a cap lowers."""

from __future__ import annotations

import os
import subprocess
import sys

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

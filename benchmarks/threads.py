"""The n_threads default: generation speed at each thread count, on an idle machine and with
one other busy process (what a server, a notebook or a build next to llamadiff looks like).

    python benchmarks/threads.py [--threads 1,2] [--rounds 3]

Workloads: the shipped block model on its five task prompts (max_new_tokens 16), and a
random-weight ~100M qwen3 (``llamadiff.bench.SHAPE``, F16) generating 64 tokens at block 4.
Each measurement is a fresh Generator; thread counts and load states interleave; medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llamadiff import Generator, default_model, testing
from llamadiff._core import default_threads, physical_cores
from llamadiff.bench import SHAPE, machine

PROMPTS = ["47+38=", "sort 93715=", "rev python=", "copy k9x2=", "a1b7c4:b="]


def tok_per_s(path, threads: int, prompts: list, max_new: int) -> float:
    with Generator(path, n_ctx=512, n_threads=threads) as gen:
        gen.generate(prompts[0], max_new_tokens=4)                # warm-up
        t0 = time.perf_counter()
        n = sum(len(gen.generate(p, max_new_tokens=max_new, stop=[]).tokens) for p in prompts)
        return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        big = str(Path(tmp) / "qwen3-100m.gguf")
        testing.write_model(big, "qwen3", shape=SHAPE, dtype="f16")
        work = {"shipped model, 5 prompts x 16": (default_model(), PROMPTS, 16),
                "~100M qwen3, 64 tokens": (big, [[100, 200, 300, 17]], 64)}
        results: dict = {}
        for _ in range(args.rounds):
            for load in ("idle", "one busy process"):
                hog = None
                if load != "idle":
                    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    time.sleep(0.5)
                try:
                    for name, (path, prompts, max_new) in work.items():
                        for t in counts:
                            results.setdefault((name, load, t), []).append(tok_per_s(path, t, prompts, max_new))
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
    print(f"machine: {machine()}; default_threads() = {default_threads()} (physical cores {physical_cores()})")
    print()
    print("| workload | machine | " + " | ".join(f"{t} thread{'s' if t > 1 else ''}, tok/s" for t in counts) + " |")
    print("|---|---|" + "---|" * len(counts))
    for name in work:
        for load in ("idle", "one busy process"):
            cells = [f"{statistics.median(results[(name, load, t)]):.1f}" for t in counts]
            print(f"| {name} | {load} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

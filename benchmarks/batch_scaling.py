"""Batched block diffusion: committed tokens per second against the number of parallel sequences.

    python benchmarks/batch_scaling.py [--model M.gguf] [--parallel 1,2,4,8,16,32] [--prompts 32]
                                       [--gen 64] [--runs 2] [--device cpu|cuda] [--out docs/BENCHMARKS.md]

The same work at every point: ``--prompts`` different prompts, ``--gen`` new tokens each,
block 4 / 4 steps, greedy, no stop tokens; only ``n_parallel`` changes (continuous batching
refills a finished sequence's slot from the queue). Without ``--model`` a random qwen3 of
the harness's ``full`` shape (103M parameters, vocab 151,936, F16) is written once. Runs of
the different points are interleaved; the median is reported. tok/s = generated tokens of all
prompts / wall time of the batch call (context creation excluded by a warm-up call).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from llamadiff import Generator, testing  # noqa: E402
from llamadiff.bench import commit, machine  # noqa: E402
from run import ROOT, SUITES, log, write_section  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--parallel", default="1,2,4,8,16,32")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    t0 = time.time()
    path = Path(args.model) if args.model else ROOT / "build" / "bench-models" / "full" / "qwen3-f16.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        testing.write_model(path, "qwen3", shape=testing.ModelShape(**SUITES["full"]["shape"]), dtype="f16", seed=0)
    levels = [int(x) for x in args.parallel.split(",")]
    prompts = [f"Prompt {i}: list the numbers from {i} to {i + 20}." for i in range(args.prompts)]
    gen = Generator(str(path), n_ctx=512, n_threads=args.threads or os.cpu_count(),
                    n_gpu_layers=-1 if args.device == "cuda" else 0)
    opts = dict(max_new_tokens=args.gen, block_length=4, steps=4, strategy="low_confidence_static", stop=[])
    reference = {}
    times = {n: [] for n in levels}
    steps = {}
    for n in levels:                       # warm-up: contexts of every shape, reference tokens
        res = gen.generate(prompts, n_parallel=n, **opts)
        reference[n] = [r.tokens for r in res]
    same = {n: sum(a == b for a, b in zip(reference[n], reference[levels[0]])) for n in levels}
    for r in range(args.runs):
        order = levels[r % len(levels):] + levels[:r % len(levels)]
        for n in order:
            res = gen.generate(prompts, n_parallel=n, **opts)
            b = res[0].stats["batch"]
            times[n].append(b["wall_ms"] - b["context_ms"])
            steps[n] = b["steps"]
        log(f"  round {r + 1}/{args.runs} done")
    total = args.prompts * args.gen
    rows = [(n, total / (statistics.median(times[n]) / 1e3), statistics.median(times[n]) / 1e3, steps[n]) for n in levels]
    base = rows[0][1]
    lines = [
        f"### Batched generation: scaling with parallel sequences, {args.device} ({time.strftime('%Y-%m-%d')}, commit {commit(ROOT)})",
        "",
        f"Command: `python benchmarks/batch_scaling.py --parallel {args.parallel} --prompts {args.prompts} --gen {args.gen} "
        f"--runs {args.runs} --device {args.device}{' --out ' + args.out if args.out else ''}`. Machine: {machine()}. "
        f"Model: {path.name} ({path.stat().st_size / 2**20:.0f} MiB). {args.prompts} prompts x {args.gen} new tokens, "
        f"block 4 / 4 steps, greedy; median of {args.runs} interleaved runs; the last column counts the "
        f"sequences whose tokens equal those of n_parallel={levels[0]}. Wall time of the whole run: "
        f"{(time.time() - t0) / 60:.1f} min.",
        "",
        "| n_parallel | committed tok/s | x vs 1 | wall s | decode calls (steps) | same tokens as 1 |",
        "|---|---|---|---|---|---|",
    ]
    for n, tps, wall, st in rows:
        lines.append(f"| {n} | {tps:.1f} | x{tps / base:.2f} | {wall:.1f} | {st} | {same[n]}/{args.prompts} |")
    lines.append("")
    print("\n".join(lines))
    if args.out:
        plot_path = Path(args.plot) if args.plot else Path(args.out).with_name(f"batch-scaling-{args.device}.png")
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("parallel sequences (n_parallel)")
            ax.set_ylabel("committed tok/s")
            ax.set_ylim(bottom=0)
            ax.set_title(f"batched block diffusion, {args.device}")
            fig.tight_layout()
            fig.savefig(plot_path, dpi=110)
            log(f"plot: {plot_path}")
            link = os.path.relpath(plot_path.resolve(), Path(args.out).resolve().parent)
            lines += [f"![committed tok/s against parallel sequences]({link})", ""]   # once it exists
        except ImportError:
            log("matplotlib not installed: no plot")
        write_section(Path(args.out), f"batch-{args.device}", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Self-speculation (``mode="speculative"``) against plain autoregressive decoding of the same
body, side by side in one run, on the CPU.

    python benchmarks/speculative.py [--prompts 40] [--gen 32] [--rounds 3] [--out docs/BENCHMARKS.md]

1. The shipped block model (``llamadiff.default_model("block")``, blocks of 4): every prompt
   decoded with ``mode="autoregressive"`` and ``mode="speculative"`` in alternation (``rounds``
   times, the median kept); tokens per second of each, the acceptance length (tokens kept per
   verify pass), and whether the two gave the same tokens (they must: speculation is lossless).
2. Where it pays: the cost of one pass of n tokens against one of 1 token, on a random-weight
   body of realistic proportions (F16, Qwen-size vocabulary; a pass's cost does not depend on
   the weights' values), and from it the acceptance length a speculative step must reach to
   beat autoregressive decoding: a step costs a draft pass and a verify pass of block + 1
   tokens each, against one 1-token pass per token.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llamadiff import Context, Generator, Model, tasks, testing  # noqa: E402,F401
from llamadiff.bench import SHAPE, commit, machine, write_section  # noqa: E402
from llamadiff.paths import default_model  # noqa: E402

BLOCKS = (4, 8, 16, 32)


def shipped(n_prompts: int, gen: int, rounds: int) -> dict:
    out = {"ar_s": [], "spec_s": [], "tokens": 0, "same": 0, "kept": 0, "verify": 0, "drafted": 0,
           "accepted": 0}
    with Generator(default_model("block"), n_ctx=256, n_threads=2) as g:
        prompts = [g.prompt_tokens(p) for p, _ in tasks.examples(n_prompts, split="test", seed=2)]
        g.generate(prompts[0], max_new_tokens=gen, mode="speculative", stop=[])      # warm-up
        for ids in prompts:
            times = {"autoregressive": [], "speculative": []}
            results = {}
            for _ in range(rounds):
                for mode in ("autoregressive", "speculative"):
                    t0 = time.perf_counter()
                    results[mode] = g.generate(ids, max_new_tokens=gen, mode=mode, stop=[])
                    times[mode].append(time.perf_counter() - t0)
            spec = results["speculative"]
            out["ar_s"].append(statistics.median(times["autoregressive"]))
            out["spec_s"].append(statistics.median(times["speculative"]))
            out["tokens"] += len(spec.tokens)
            out["same"] += spec.tokens == results["autoregressive"].tokens
            out["verify"] += spec.stats["verify_passes"]
            out["kept"] += sum(spec.stats["committed_per_step"])
            out["drafted"] += spec.stats["drafted"]
            out["accepted"] += spec.stats["accepted"]
    return out


def batched(n_prompts: int, gen: int, rounds: int, n_parallel: int) -> dict:
    """tok/s of the prompts as one batch of ``n_parallel`` sequences, each mode in turn."""
    times = {"autoregressive": [], "speculative": []}
    tokens = {}
    with Generator(default_model("block"), n_ctx=512, n_threads=2) as g:
        prompts = [g.prompt_tokens(p) for p, _ in tasks.examples(n_prompts, split="test", seed=2)]
        for mode in times:                                   # warm-up: contexts made
            g.generate(prompts[:n_parallel], max_new_tokens=gen, mode=mode, stop=[], n_parallel=n_parallel)
        for _ in range(rounds):
            for mode in times:
                t0 = time.perf_counter()
                results = g.generate(prompts, max_new_tokens=gen, mode=mode, stop=[], n_parallel=n_parallel)
                times[mode].append(time.perf_counter() - t0)
                tokens[mode] = [r.tokens for r in results]
    n = sum(len(t) for t in tokens["speculative"])
    return {mode: n / statistics.median(t) for mode, t in times.items()} | {
        "same": sum(a == b for a, b in zip(tokens["speculative"], tokens["autoregressive"]))}


def pass_costs(rounds: int) -> dict:
    """ms of one causal pass of n tokens after a 64-token prefix, n = 1 and block + 1."""
    with tempfile.TemporaryDirectory() as tmp:
        path = testing.write_model(Path(tmp) / "body.gguf", "qwen3", shape=SHAPE, dtype="f16", seed=1)
        model = Model(path)
        costs = {}
        with Context(model, n_ctx=512, n_batch=64, n_ubatch=64, causal=True, n_threads=2) as ctx:
            prefix = list(range(300, 364))
            for n in (1,) + tuple(b + 1 for b in BLOCKS):
                samples = []
                for _ in range(rounds * 5):
                    ctx.memory_clear()
                    ctx.decode(prefix, logits=False)
                    t0 = time.perf_counter()
                    ctx.decode(list(range(400, 400 + n)), logits=True)
                    samples.append((time.perf_counter() - t0) * 1e3)
                costs[n] = statistics.median(samples)
        del model
    return costs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    s = shipped(args.prompts, args.gen, args.rounds)
    ar_tps = s["tokens"] / sum(s["ar_s"])
    spec_tps = s["tokens"] / sum(s["spec_s"])
    b = batched(args.prompts, args.gen, args.rounds, 16)
    costs = pass_costs(args.rounds)
    lines = [f"### Self-speculation against autoregressive decoding ({time.strftime('%Y-%m-%d')}, commit {commit()})",
             "",
             f"Command: `python benchmarks/speculative.py --prompts {args.prompts} --gen {args.gen} --rounds "
             f"{args.rounds}`. Machine: {machine()}. Greedy; 2 threads.", "",
             f"**The shipped block model** (blocks of 4, {args.prompts} held-out task prompts, {args.gen} new tokens "
             "each with no stop, the two modes alternated and the median of the rounds kept):", "",
             "| mode | tok/s | passes per token | acceptance length (tokens kept per verify pass) | drafts kept | same tokens as autoregressive |",
             "|---|---|---|---|---|---|",
             f"| autoregressive | {ar_tps:.0f} | 1.00 | -- | -- | -- |",
             f"| speculative | {spec_tps:.0f} | {2 * s['verify'] / s['kept']:.2f} | {s['kept'] / s['verify']:.2f} | "
             f"{s['accepted']} of {s['drafted']} ({100 * s['accepted'] / max(s['drafted'], 1):.0f}%) | "
             f"{s['same']} of {args.prompts} |", "",
             f"Speculative / autoregressive: {spec_tps / ar_tps:.2f}x.", "",
             f"The same {args.prompts} prompts as batches of 16 sequences (one verify or autoregressive pass for all "
             "of them per step, and one pass for all of their drafts; median of the rounds): autoregressive "
             f"{b['autoregressive']:.0f} tok/s, speculative {b['speculative']:.0f} tok/s "
             f"({b['speculative'] / b['autoregressive']:.2f}x; the same tokens for {b['same']} of {args.prompts}).", "",
             "**Where it pays**: one causal pass of n tokens after a 64-token prefix, on a random-weight qwen3 "
             "body of realistic proportions (n_embd 512, 8 layers, F16, a 151,936-token vocabulary; median of "
             f"{args.rounds * 5}), and the acceptance length a speculative step (a draft pass and a verify pass "
             "of block + 1 tokens) must reach to beat one 1-token pass per token:", "",
             "| block | pass of block + 1 tokens (ms) | / pass of 1 token | break-even acceptance length |",
             "|---|---|---|---|"]
    c1 = costs[1]
    lines.insert(-2, f"One pass of 1 token: {c1:.2f} ms.")
    lines.insert(-2, "")
    for b in BLOCKS:
        c = costs[b + 1]
        lines.append(f"| {b} | {c:.2f} | {c / c1:.2f} | {2 * c / c1:.2f} |")
    lines.append("")
    print("\n".join(lines))
    if args.out:
        write_section(args.out, "speculative", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

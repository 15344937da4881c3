"""Host work per sequence-step: the wall time of a batched call that is neither decode nor
sampling (``profile``'s split), per sequence and step, at several batch sizes.

    python benchmarks/host_overhead.py [--parallel 1,16,64,128] [--gen 64] [--runs 3]
                                       [--sampler auto] [--threads 1] [--json]

The model is a one-layer random qwen3 with a 288-token vocabulary, so a decode and the row
sampling cost little and what is left is the loop around them: batch filling, KV
bookkeeping, the policies, finished blocks, stops, results -- everything the engine and the
Generator do per sequence. Block 4 / steps 4, greedy, every prompt as long as the others.

Reported per batch size (median of ``--runs``): wall, decode, sampling, selection (the
policies), "host" (wall minus decode, sampling and the making of a context: the policies count
as host work), and host per sequence-step in microseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from llamadiff import Generator, testing

SHAPE = testing.ModelShape(n_embd=32, n_layer=1, n_head=2, n_head_kv=1, head_dim=16, n_ff=64)


def measure(gen: Generator, n: int, gen_tokens: int, sampler_name: str) -> dict:
    prompts = [[100 + (i * 7 + j) % 150 for j in range(8)] for i in range(n)]
    t0 = time.perf_counter()
    results = gen.generate(prompts, max_new_tokens=gen_tokens, block_length=4, steps=4, stop=[],
                           n_parallel=n, profile=True)
    wall_ms = (time.perf_counter() - t0) * 1e3
    batch = results[0].stats["batch"]          # a list of one prompt reports the batch totals too
    steps = batch["steps"]
    decode = batch["decode_ms"]
    sampling = batch["sampling_ms"]
    selection = batch["selection_ms"]
    prefill = batch["prefill_ms"]
    host = wall_ms - decode - sampling - batch["context_ms"]
    seq_steps = sum(len(r.stats["committed_per_step"]) for r in results)
    return {"n_parallel": n, "steps": steps, "sequence_steps": seq_steps, "wall_ms": wall_ms,
            "decode_ms": decode, "sampling_ms": sampling, "selection_ms": selection, "prefill_ms": prefill,
            "host_ms": host, "host_us_per_sequence_step": host * 1e3 / seq_steps,
            "sampler": sampler_name}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parallel", default="1,16,64,128")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sampler", default="auto")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.parallel.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = testing.write_model(Path(tmp) / "tiny.gguf", "qwen3", shape=SHAPE, seed=0)
        with Generator(path, n_ctx=256 * max(sizes), n_threads=args.threads, sampler=args.sampler) as gen:
            name = gen.sampler.name
            measure(gen, max(sizes), args.gen, name)     # the context of the largest batch, once
            rows = []
            for n in sizes:
                runs = [measure(gen, n, args.gen, name) for _ in range(args.runs)]
                med = {k: (statistics.median(r[k] for r in runs) if isinstance(runs[0][k], float) else runs[0][k])
                       for k in runs[0]}
                rows.append(med)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"block 4 / steps 4, gen {args.gen}, sampler {rows[0]['sampler']}, {args.threads} thread(s); "
          f"median of {args.runs}")
    print("| n_parallel | sequence-steps | wall ms | decode ms | sampling ms | selection ms | host ms | "
          "host µs per sequence-step |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n_parallel']} | {r['sequence_steps']} | {r['wall_ms']:.1f} | {r['decode_ms']:.1f} | "
              f"{r['sampling_ms']:.1f} | {r['selection_ms']:.1f} | {r['host_ms']:.1f} | "
              f"{r['host_us_per_sequence_step']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

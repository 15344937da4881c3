"""DiffusionGemma's exact prefix cache: a denoising step with the cache (the canvas only) against
one that encodes the prefix again (``cache=False``), side by side, on the CPU.

    python benchmarks/canvas_prefix.py [--prompts 1024 4096] [--steps 4] [--rounds 3] [--out docs/BENCHMARKS.md]

A random-weight DiffusionGemma of Gemma-4-like proportions scaled to a CPU (see ``SHAPE``; a
pass's cost does not depend on the weights' values), F16 matrices, canvas 256, sliding window
1024. Each prompt length runs one canvas of ``steps`` steps (the stop rule off: every step
runs) in both modes, alternating, ``rounds`` times (medians kept). A step's cost is the decode
time after the prompt's prefill, divided by the steps: with the cache that is the canvas's
decoder pass; without, the prefix's encoder pass and the canvas's. Both modes give the same
tokens (checked).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llamadiff import Generator, testing  # noqa: E402
from llamadiff.bench import commit, machine, write_section  # noqa: E402

# 12 layers (five sliding, one full, twice), width 1024, 8 query heads; sliding layers 4 KV heads
# of 128, full ones 2 of 256 (V = K), proportional RoPE; dense GeGLU 1024 and 16 experts of 256,
# top 4, in every layer; the test vocabulary (276: the LM head and self-conditioning products,
# which cost the same in both modes, stay small)
SHAPE = testing.CanvasShape(
    n_embd=1024, n_ff=1024, n_head=8, n_head_kv=4, head_dim=128, n_head_kv_full=2, head_dim_full=256,
    layer_types=(("sliding_attention",) * 5 + ("full_attention",)) * 2, sliding_window=1024, n_expert=16,
    n_expert_used=4, n_ff_exp=256, canvas_length=256, n_ctx_train=8192)


def measure(path: str, n_prompt: int, steps: int, rounds: int, threads: int) -> dict:
    prompt = [5 + (i * 7919) % 260 for i in range(n_prompt)]
    opts = dict(max_new_tokens=SHAPE.canvas_length, steps=steps, confidence=0.0, seed=1, stop=[])
    per_step = {True: [], False: []}
    tokens = {}
    with Generator(path, n_ctx=n_prompt + 2 * SHAPE.canvas_length, n_threads=threads) as g:
        g.generate(prompt, **opts)                         # warm-up (the context is made here)
        for _ in range(rounds):
            for cache in (True, False):
                r = g.generate(prompt, cache=cache, profile=True, **opts)
                per_step[cache].append(r.stats["profile"]["decode_ms"] / sum(r.stats["steps_per_block"]))
                tokens[cache] = r.tokens
    cached, again = statistics.median(per_step[True]), statistics.median(per_step[False])
    return {"n_prompt": n_prompt, "cached_ms": cached, "recompute_ms": again, "ratio": again / cached,
            "same": tokens[True] == tokens[False]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the section into this markdown file")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(testing.write_diffusion_gemma(Path(tmp) / "dg.gguf", shape=SHAPE, dtype="f16", std=0.02))
        rows = [measure(path, n, args.steps, args.rounds, args.threads) for n in args.prompts]
    lines = [f"### DiffusionGemma: a step with the prefix cache against recomputing the prefix "
             f"(commit {commit()})", "",
             f"{machine()}, {args.threads} threads; `python benchmarks/canvas_prefix.py --steps {args.steps} "
             f"--rounds {args.rounds}`. Random-weight DiffusionGemma of CPU size (12 layers, width 1024, "
             "16 experts top 4, F16), canvas 256, sliding window 1024; medians of the rounds, the two modes "
             "alternating.", "",
             "| prompt | step with the cache | step recomputing the prefix | ratio | same tokens |",
             "|---:|---:|---:|---:|:---:|"]
    for r in rows:
        lines.append(f"| {r['n_prompt']} | {r['cached_ms']:.0f} ms | {r['recompute_ms']:.0f} ms | "
                     f"{r['ratio']:.1f}x | {'yes' if r['same'] else 'NO'} |")
    print("\n".join(lines))
    if args.out:
        write_section(args.out, "canvas-prefix", lines)
    return 0 if all(r["same"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

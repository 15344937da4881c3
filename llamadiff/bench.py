"""Block-diffusion generation speed: exact KV cache vs recompute, against the decode floor.

    llamadiff bench [--quick] [--out docs/BENCHMARKS.md]
    python benchmarks/block_generation.py [--quick] [--out docs/BENCHMARKS.md]

Writes a random-weight qwen3 model of realistic proportions (F16, Qwen-size vocabulary;
speed does not depend on weight values for fixed-step schedules), then measures, for
gen 256 at block 4 / 8 / 16 with steps = block:

- llamadiff with ``cache=True`` (the default) and ``cache=False`` (recompute everything),
- the share of wall time that is not llama_decode (batch filling, sampling, policy, Python),
- the forward-pass floor: the same llama_decode calls, same sizes, nothing else,
- prefill of a 1024-token prompt at block 4 against one plain causal prefill.

Runs of the two modes are interleaved and ratios are taken pair by pair.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llamadiff import testing
from llamadiff._core import Context, Model, default_threads, llama_cpp_version
from llamadiff.generator import Generator

SHAPE = testing.ModelShape(n_embd=512, n_layer=8, n_head=8, n_head_kv=4, head_dim=64, n_ff=1536,
                           n_ctx_train=4096, tie_embeddings=True, n_vocab_pad=151936 - 276)
PROMPT_LEN = 32
GEN = 256


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


def commit(directory=None):
    """Short git commit of ``directory`` (default: the working directory), or 'unknown'."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=directory or Path.cwd()).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def floor_run(ctx: Context, stats: dict, block: int) -> float:
    """Replay the decode calls of a cached run (sizes and outputs), with no sampling: ms."""
    steps = stats["steps_per_block"]
    committed = stats["committed_per_step"]
    n_prompt = stats["prompt_tokens"]
    ctx.memory_clear()
    ctx.set_block_causal(block)
    tok = [17] * (4 * block)
    t0 = time.perf_counter()
    full = (n_prompt // block) * block
    if full:
        ctx.decode(tok[:1] * full, positions=range(full), logits=False)
    pos = full
    i = 0
    pending = False
    for n_steps in steps:
        masked = block - (n_prompt - pos if pos < n_prompt else 0)
        for _ in range(n_steps):
            start = pos - block if pending else pos
            n = pos + block - start
            flags = [False] * (n - block) + [False] * (block - masked) + [True] * masked
            ctx.decode(tok[:n], positions=range(start, pos + block), logits=flags)
            ctx.memory_remove(pos)
            pending = False
            masked -= committed[i]
            i += 1
        pending = True
        pos += block
    return (time.perf_counter() - t0) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(prog="llamadiff bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (about 2 minutes on 2 idle cores)")
    ap.add_argument("--blocks", default="4,8,16", help="block lengths, comma-separated")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads (default: the library's default_threads(): the physical cores, one CPU "
                         "left free -- all cores spin-wait each other on a loaded machine)")
    ap.add_argument("--out", default=None, help="append the results to this markdown file")
    args = ap.parse_args(argv)
    reps = 2 if args.quick else 3
    t_start = time.perf_counter()

    def progress(what: str) -> None:
        print(f"  [{time.perf_counter() - t_start:5.0f} s] {what}", file=sys.stderr, flush=True)

    tmp = Path(tempfile.mkdtemp())
    path = testing.write_model(tmp / "qwen3-bench.gguf", "qwen3", shape=SHAPE, dtype="f16", seed=0)
    model = Model(path)
    threads = args.threads if args.threads is not None else default_threads()
    print(f"model: {model.n_params / 1e6:.0f}M params, {model.size / 2**20:.0f} MiB {model.file_type}, "
          f"vocab {model.n_vocab}; threads {threads}")
    prompt = list(range(300, 300 + PROMPT_LEN))
    gen = Generator(model, n_ctx=2048, n_threads=threads)
    gen.generate(prompt, max_new_tokens=8, stop=[])          # warm-up (context, caches)
    rows = []
    for block in [int(b) for b in args.blocks.split(",")]:
        opts = dict(max_new_tokens=GEN, block_length=block, steps=block, strategy="low_confidence_static",
                    stop=[])
        cached, uncached, ratios, floors, overhead, same = [], [], [], [], [], []
        for r in range(reps):
            a = gen.generate(prompt, **opts)
            cached.append(a.stats["wall_ms"])
            overhead.append(1 - a.stats["decode_ms"] / a.stats["wall_ms"])
            floors.append(floor_run(gen.contexts.single, a.stats, block))
            progress(f"block {block}, run {r + 1}/{reps}: cache {a.stats['tokens_per_second']:.1f} tok/s")
            if r == 0 or not args.quick:
                b = gen.generate(prompt, cache=False, **opts)
                same.append(sum(x == y for x, y in zip(a.tokens, b.tokens)) / len(a.tokens))
                uncached.append(b.stats["wall_ms"])
                ratios.append(b.stats["wall_ms"] / a.stats["wall_ms"])
                progress(f"block {block}, run {r + 1}/{reps}: no cache {b.stats['tokens_per_second']:.1f} tok/s")
        med = statistics.median
        row = dict(block=block, cached_tps=GEN / (med(cached) / 1e3), uncached_tps=GEN / (med(uncached) / 1e3),
                   speedup=med(ratios), speedup_range=(min(ratios), max(ratios)),
                   overhead=med(overhead), floor_tps=GEN / (med(floors) / 1e3),
                   cached_range=(GEN / (max(cached) / 1e3), GEN / (min(cached) / 1e3)),
                   decode_calls=a.stats["decode_calls"], sampling_ms=a.stats["sampling_ms"],
                   same=min(same))
        rows.append(row)
        print(f"block {block:2d}: cache {row['cached_tps']:7.1f} tok/s  no-cache {row['uncached_tps']:6.1f} tok/s"
              f"  speedup x{row['speedup']:.2f}  floor {row['floor_tps']:7.1f} tok/s"
              f"  not-decode {100 * row['overhead']:.1f}% of wall  same tokens {100 * row['same']:.0f}%", flush=True)

    # prefill: a 1024-token prompt at block 4 vs one plain causal prefill of 1024 tokens
    long_prompt = [300 + (i % 1000) for i in range(1024)]
    pgen = Generator(model, n_ctx=2048, n_threads=threads, n_batch=1024)
    pgen.generate(long_prompt, max_new_tokens=4, stop=[])
    causal = Context(model, n_ctx=2048, n_batch=1024, n_ubatch=1024, n_threads=threads)
    causal.decode(long_prompt, logits="last")
    pre, ref = [], []
    for _ in range(reps):
        pre.append(pgen.generate(long_prompt, max_new_tokens=4, stop=[]).stats["prefill_ms"])
        causal.memory_clear()
        t0 = time.perf_counter()
        causal.decode(long_prompt, logits="last")
        ref.append((time.perf_counter() - t0) * 1e3)
    prefill_ratio = statistics.median([p / r for p, r in zip(pre, ref)])
    print(f"prefill 1024 tokens: block-causal {statistics.median(pre):.0f} ms, causal {statistics.median(ref):.0f} ms,"
          f" ratio {prefill_ratio:.2f}")

    if args.out:
        lines = [
            "",
            f"### Block diffusion on CPU: cache vs recompute (commit {commit()}, {time.strftime('%Y-%m-%d')})",
            "",
            f"Machine: {machine()}. llama.cpp {llama_cpp_version()} (sdist llama-cpp-python 0.3.36).",
            f"Command: `llamadiff bench{' --quick' if args.quick else ''} --out docs/BENCHMARKS.md`.",
            f"Model: random-weight qwen3, {model.n_params / 1e6:.0f}M params ({SHAPE.n_layer} layers, n_embd "
            f"{SHAPE.n_embd}, vocab {model.n_vocab}, tied embeddings), F16, {model.size / 2**20:.0f} MiB. "
            f"Prompt {PROMPT_LEN} tokens, gen {GEN}, steps = block, strategy low_confidence_static, greedy, "
            f"{threads} threads. Medians of {reps} runs; the speed-up is the median of per-pair ratios "
            "(cache and no-cache runs interleaved).",
            "",
            "| block | cache=True tok/s (min-max) | cache=False tok/s | speed-up (min-max) | decode floor tok/s | "
            "not llama_decode, % of wall | decode calls | sampling ms | tokens equal to cache=False |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(f"| {r['block']} | {r['cached_tps']:.1f} ({r['cached_range'][0]:.1f}-{r['cached_range'][1]:.1f}) "
                         f"| {r['uncached_tps']:.1f} | x{r['speedup']:.2f} ({r['speedup_range'][0]:.2f}-"
                         f"{r['speedup_range'][1]:.2f}) | {r['floor_tps']:.1f} | {100 * r['overhead']:.1f} "
                         f"| {r['decode_calls']} | {r['sampling_ms']:.1f} | {100 * r['same']:.0f}% |")
        lines += [
            "",
            f"Prefill of a 1024-token prompt at block 4 (block-causal, one batch): {statistics.median(pre):.0f} ms; "
            f"plain causal prefill of the same 1024 tokens: {statistics.median(ref):.0f} ms; "
            f"ratio {prefill_ratio:.2f} (median of per-pair ratios).",
            "",
        ]
        with open(args.out, "a") as fh:
            fh.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def write_section(path, marker: str, lines: list) -> None:
    """Write ``lines`` into the markdown file ``path`` between ``<!-- MARKER:start -->`` and
    ``<!-- MARKER:end -->``, replacing an earlier section of that name, else appending it."""
    path = Path(path)
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = "\n".join([start, *lines, end])
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)

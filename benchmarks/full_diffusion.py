"""Full-diffusion benchmark: upstream llama-diffusion-cli against llamadiff's exact and cached modes.

    python benchmarks/full_diffusion.py [--runs N] [--gen 256] [--block 32] [--out docs/BENCHMARKS.md]

Model: a random-weight ``llada`` GGUF with LLaDA-8B's proportions scaled down to what this
CPU runs in minutes (vocabulary 126,464 as LLaDA's, untied output, multi-head attention, FFN
3x), F16. Prompt: the CLI always wraps its prompt in the chat template (ChatML for this
model), so the text is chosen to give exactly ``--prompt`` tokens after wrapping, and
llamadiff gets the same token ids. LLaDA schedule: blocks of ``--block``, one token per step
(steps = gen). The CLI counts its blocks over prompt + generation, so it gets
``steps = (prompt + gen) / block * (block per block)`` to run the same 32 steps per block.

Participants, each in its own process, interleaved with a rotating order after a discarded
warm-up: the CLI (its own timer, model load excluded), llamadiff ``rng="llama.cpp"`` (the
CLI's draws, checked token for token against it), llamadiff ``cache="none"`` (exact),
``"prefix"``, ``"dual"`` and ``"dual"`` + ``parallel="threshold"``. Quality: the share of
generated tokens identical to exact mode, for each fast mode.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import llamadiff  # noqa: E402
from llamadiff import testing  # noqa: E402
from llamadiff.bench import commit, machine  # noqa: E402
from run import ROOT, Worker, build_diffusion_cli, log, summarise, write_section, RSS_LAUNCHER  # noqa: E402

SHAPE = dict(n_embd=512, n_layer=8, n_head=8, n_head_kv=8, head_dim=64, n_ff=1536,
             tie_embeddings=False, n_vocab_pad=126464 - 276)


def cli_prompt(model: llamadiff.Model, n_prompt: int) -> tuple[str, list]:
    """Prompt text whose ChatML-wrapped tokenization (what the CLI decodes) has n_prompt tokens."""
    for n in range(1, 4 * n_prompt):
        text = " ".join(["word"] * n)
        wrapped = f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
        ids = model.tokenize(wrapped, add_special=True, parse_special=True)
        if len(ids) == n_prompt:
            return text, ids
        if len(ids) > n_prompt:
            break
    raise SystemExit(f"no prompt text gives exactly {n_prompt} tokens")


def run_cli(exe: Path, model: Path, text: str, total: int, steps: int, block: int, threads: int) -> dict:
    import re
    import subprocess
    import tempfile
    cmd = [str(exe), "-m", str(model), "-p", text, "--diffusion-steps", str(steps),
           "--diffusion-block-length", str(block), "--temp", "0", "--top-k", "0", "--top-p", "1.0",
           "--seed", "0", "-ub", str(total), "-b", str(total), "-c", str(total + 64), "-t", str(threads)]
    with tempfile.TemporaryFile("w+b") as fh:
        proc = subprocess.run([sys.executable, "-S", "-c", RSS_LAUNCHER, *cmd], stdout=fh, stderr=subprocess.STDOUT)
        fh.seek(0)
        out = fh.read()
    m = re.search(rb"total time: ([0-9.]+)ms", out)
    rss = re.search(rb"LLAMADIFF_PEAK_RSS_KB=(\d+)", out)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"llama-diffusion-cli failed ({proc.returncode}): {out[-500:]!r}")
    text_m = re.search(rb"sampling time per step: [0-9.]+ms\n(?:[0-9.]+ I )?\n(.*)\nLLAMADIFF_PEAK", out, re.S)
    return {"wall_ms": float(m.group(1)), "peak_rss_mb": int(rss.group(1)) / 1024 if rss else None,
            "text": text_m.group(1) if text_m else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="markdown file to write the results section into")
    args = ap.parse_args(argv)
    import os
    threads = args.threads or os.cpu_count()
    t_start = time.time()

    path = ROOT / "build" / "bench-models" / "llada-8b-shape" / "llada-f16.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        log(f"writing {path}")
        testing.write_model(path, "llada", shape=testing.ModelShape(**SHAPE), dtype="f16", seed=0)
    with llamadiff.Model(str(path), vocab_only=True) as m:
        text, prompt = cli_prompt(m, args.prompt)
    total = args.prompt + args.gen
    if total % args.block:
        raise SystemExit("prompt + gen must be a multiple of the block length (the CLI asserts it)")
    steps_per_block = args.block                      # one token per step
    n_blocks = args.gen // args.block
    cli_steps = (total // args.block) * steps_per_block
    # its blocks past the end of the sequence are empty: one decode each, then they stop
    cli_forwards = n_blocks * steps_per_block + (total // args.block - n_blocks)
    exe = build_diffusion_cli()

    base = dict(max_new_tokens=args.gen, block_length=args.block, steps=n_blocks * steps_per_block,
                algorithm="confidence")
    modes = {
        "llama.cpp rng": dict(base, rng="llama.cpp", cache="none"),
        "none": dict(base, cache="none"),
        "prefix": dict(base, cache="prefix"),
        "dual": dict(base, cache="dual"),
        "dual+threshold": dict(base, cache="dual", parallel="threshold", threshold=args.threshold),
    }
    spec = {"prompt": prompt, "threads": threads, "n_ctx": 4096, "n_gpu_layers": 0, "impl": "llamadiff",
            "model": str(path)}
    workers = {name: Worker(spec) for name in modes}
    names = list(modes) + (["cli"] if exe else [])

    def once(name):
        if name == "cli":
            return run_cli(exe, path, text, total, cli_steps, args.block, threads)
        return workers[name].run(**modes[name])

    log(f"warm-up ({len(names)} participants)")
    results = {name: [] for name in names}
    for name in names:
        once(name)
    for r in range(args.runs):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            results[name].append(once(name))
        log(f"  round {r + 1}/{args.runs} done")
    rss = {name: w.close() for name, w in workers.items()}
    if exe:
        rss["cli"] = max(x["peak_rss_mb"] or 0 for x in results["cli"])

    ref = results["none"][0]["tokens"]
    with llamadiff.Model(str(path), vocab_only=True) as m:
        compat_bytes = m.detokenize_bytes(results["llama.cpp rng"][0]["tokens"]).split(b"\0")[0]
    same_as_cli = None
    if exe and results["cli"][0]["text"] is not None:
        same_as_cli = results["cli"][0]["text"] == compat_bytes
    rows = []
    for name in names:
        times = [x["wall_ms"] for x in results[name]]
        row = {"name": name, **summarise(times, args.gen)}
        if exe and name != "cli":
            row["vs_cli"] = statistics.median(c["wall_ms"] / x["wall_ms"] for c, x in zip(results["cli"], results[name]))
        if name != "cli":
            toks = results[name][0]["tokens"]
            row["same"] = sum(a == b for a, b in zip(toks, ref)) / len(ref)
            row["forwards"] = results[name][0]["decode_calls"]
        rows.append(row)

    f = lambda s: f"{s['tok_s']:.2f} ({s['tok_s_range'][0]:.2f}-{s['tok_s_range'][1]:.2f})"  # noqa: E731
    label = {"cli": "upstream llama-diffusion-cli", "llama.cpp rng": "llamadiff, `rng=\"llama.cpp\"` (CLI's draws)",
             "none": "llamadiff, `cache=\"none\"` (exact)", "prefix": "llamadiff, `cache=\"prefix\"`",
             "dual": "llamadiff, `cache=\"dual\"`",
             "dual+threshold": f"llamadiff, `cache=\"dual\"`, `parallel=\"threshold\"` ({args.threshold})"}
    n_vocab = 276 + SHAPE["n_vocab_pad"]
    lines = [
        f"### Full diffusion: upstream CLI vs llamadiff ({time.strftime('%Y-%m-%d')}, commit {commit(ROOT)})",
        "",
        f"Command: `python benchmarks/full_diffusion.py --runs {args.runs}{' --out ' + args.out if args.out else ''}`. "
        f"Machine: {machine()}, {threads} threads. Wall time of the whole run: {(time.time() - t_start) / 60:.1f} min.",
        "",
        f"Model: random-weight llada, {SHAPE['n_layer']} layers, n_embd {SHAPE['n_embd']}, {SHAPE['n_head']} heads "
        f"(MHA), FFN {SHAPE['n_ff']}, vocab {n_vocab} (LLaDA's), untied output, F16 "
        f"({path.stat().st_size / 2**20:.0f} MiB). Prompt {args.prompt} tokens (ChatML-wrapped, as the CLI does), "
        f"gen {args.gen}, block {args.block}, one token per step ({n_blocks * steps_per_block} steps; the CLI, "
        f"which counts blocks over prompt + generation, gets {cli_steps} for the same {steps_per_block} per block), "
        f"algorithm confidence, greedy (the CLI: `--temp 0 --top-k 0 --top-p 1`, which samples at temperature 1 "
        f"with seed 0; llamadiff's `rng=\"llama.cpp\"` row reproduces that). Median tok/s (min-max) of {args.runs} "
        "interleaved runs after a warm-up; speed-ups are medians of per-round ratios.",
        "",
        "| participant | tok/s | wall s | forward passes | x vs CLI | tokens = exact mode |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        forwards = row["forwards"] if row["name"] != "cli" else cli_forwards
        lines.append(f"| {label[row['name']]} | {f(row)} | {row['median_ms'] / 1e3:.1f} | {forwards} "
                     f"| {('x%.2f' % row['vs_cli']) if 'vs_cli' in row else '-'} "
                     f"| {('%.0f%%' % (100 * row['same'])) if 'same' in row else '-'} |")
    lines += ["", "Peak RSS per process (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()) + "."]
    if same_as_cli is not None:
        lines += ["", "The `rng=\"llama.cpp\"` run printed the same text as the CLI: "
                  + ("yes, byte for byte." if same_as_cli else "**no** (investigate).")]
    lines.append("")
    print("\n".join(lines))
    if args.out:
        write_section(Path(args.out), "full-diffusion", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

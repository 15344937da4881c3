"""Quality harness: exact-match accuracy of every decoding mode on held-out task examples.

    python -m llamadiff.eval [--n 200] [--model block|full|both] [--out docs/BENCHMARKS.md]

Runs the tiny default models (``llamadiff.default_model``) on ``n`` held-out examples of
``llamadiff.tasks`` and reports, per decoding mode: exact match (the generated text, cut at
the first stop, equals the answer), tokens committed per forward pass, and wall time per
example. Block model: the four remasking strategies at block 4, plus fewer steps; full model:
exact mode, the prefix / dual caches and the parallel modes. Token editing (LLaDA2.1's rule)
runs on the block model in both published modes, and with editing on at the speed mode's fill
threshold. ``accuracy()`` is the building
block (the tests use it on a fixed subset).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

from llamadiff import tasks
from llamadiff.generator import Generator

# the block model: block 4, one token per step ("exact") and the faster policies
BLOCK_MODES = {
    "exact: low_confidence_static, 4 steps": dict(strategy="low_confidence_static", steps=4),
    "sequential, 4 steps": dict(strategy="sequential", steps=4),
    "low_confidence_dynamic 0.9": dict(strategy="low_confidence_dynamic", threshold=0.9),
    "low_confidence_dynamic 0.7": dict(strategy="low_confidence_dynamic", threshold=0.7),
    "entropy_bounded 0.35": dict(strategy="entropy_bounded", eb_gamma=0.35),
    "low_confidence_static, 2 steps": dict(strategy="low_confidence_static", steps=2),
    "exact, no cache": dict(strategy="low_confidence_static", steps=4, cache=False),
    # LLaDA2.1's token editing, its two published modes (docs/GENERATION.md)
    "token_editing quality: 0.7 / edit 0.5 / 16": dict(strategy="token_editing", threshold=0.7,
                                                        editing_threshold=0.5, max_post_steps=16),
    "token_editing speed: 0.5 / edit off": dict(strategy="token_editing", threshold=0.5, editing_threshold=0.0),
    "token_editing 0.5 / edit 0.5 / 16": dict(strategy="token_editing", threshold=0.5, editing_threshold=0.5,
                                              max_post_steps=16),
}
# the full model: blocks of 8, one token per step in exact mode
FULL_MODES = {
    "exact: cache none": dict(cache="none"),
    "prefix cache": dict(cache="prefix"),
    "dual cache": dict(cache="dual"),
    "dual + threshold 0.9": dict(cache="dual", parallel="threshold", threshold=0.9),
    "dual + factor 1.0": dict(cache="dual", parallel="factor", factor=1.0),
    "none + threshold 0.9": dict(cache="none", parallel="threshold", threshold=0.9),
}


def seq_len(gen: Generator) -> Optional[int]:
    value = gen.model.meta("llamadiff.training.seq_len")
    return int(value) if value is not None else None


def accuracy(gen: Generator, n: int = 200, seed: int = 1, chat: bool = False, **options) -> dict:
    """Exact match over ``n`` held-out examples (``options`` go to ``generate``; ``chat``: each
    prompt as a user message, through the model's chat template)."""
    examples = tasks.examples(n, split="test", seed=seed)
    full = gen.model.family == "full"
    length = seq_len(gen)
    correct = committed = steps = edits = 0
    per_task = {t: [0, 0] for t in tasks.TASKS}
    t0 = time.perf_counter()
    for i, (prompt, answer) in enumerate(examples):
        opts = dict(options)
        if chat:
            prompt = [{"role": "user", "content": prompt}]
        if full:
            # the trained sequence length: a bidirectional model never saw positions past it
            n_prompt = len(gen.prompt_tokens(prompt))
            opts.setdefault("max_new_tokens", (length or n_prompt + 16) - n_prompt)
            opts.setdefault("block_length", 8)
            opts.setdefault("steps", opts["max_new_tokens"])
        else:
            opts.setdefault("max_new_tokens", 12)
            opts.setdefault("block_length", 4)
        res = gen.generate(prompt, **opts)
        ok = res.text == answer
        correct += ok
        task = tasks.TASKS[i % len(tasks.TASKS)]
        per_task[task][0] += ok
        per_task[task][1] += 1
        committed += sum(res.stats["committed_per_step"])
        edits += res.stats.get("edits", 0)
        steps += len(res.stats["committed_per_step"])
    return {"exact_match": correct / n, "per_task": {t: c / m for t, (c, m) in per_task.items() if m},
            "tokens_per_forward": committed / max(steps, 1), "edits_per_example": edits / n,
            "ms_per_example": (time.perf_counter() - t0) * 1e3 / n}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv=None) -> int:
    from llamadiff.paths import default_model
    from llamadiff.bench import machine, write_section

    ap = argparse.ArgumentParser(prog="python -m llamadiff.eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=_positive, default=200, help="held-out examples per mode (default 200)")
    ap.add_argument("--model", choices=["block", "full", "both"], default="both")
    ap.add_argument("--out", default=None, help="markdown file to write the results section into")
    args = ap.parse_args(argv)
    kinds = ["block", "full"] if args.model == "both" else [args.model]
    lines = [f"### Quality of the decoding modes on the default models ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `python -m llamadiff.eval --n {args.n} --model {args.model}"
             f"{' --out ' + args.out if args.out else ''}`. Machine: {machine()}. {args.n} held-out examples "
             f"of {', '.join(tasks.TASKS)} (in rotation), greedy; exact match of the text cut at the first stop.", "",
             "| model | mode | exact match | per task | tokens / forward | edits / example | ms / example |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines[-2:]), flush=True)      # the table's header, then a row per mode as it finishes
    for kind in kinds:
        modes = BLOCK_MODES if kind == "block" else FULL_MODES
        with Generator(default_model(kind), n_ctx=256, n_threads=2) as gen:
            for name, opts in modes.items():
                r = accuracy(gen, args.n, **opts)
                per = ", ".join(f"{t} {100 * v:.0f}" for t, v in r["per_task"].items())
                line = (f"| {kind} | {name} | {100 * r['exact_match']:.1f}% | {per} | {r['tokens_per_forward']:.2f} "
                        f"| {r['edits_per_example']:.2f} | {r['ms_per_example']:.1f} |")
                print(line, flush=True)
                lines.append(line)
    lines.append("")
    if args.out:                     # the rows were printed as they came; the file gets the section
        write_section(args.out, "quality", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

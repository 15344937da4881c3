"""How long Ctrl-C takes to stop a generation that is busy prefilling a long prompt.

    python benchmarks/interrupt_latency.py [--tokens 7700] [--repeats 3]

A child process loads a 103M-parameter qwen3 (block diffusion, llamadiff.bench.SHAPE, F16)
or a llada of the same shape (full diffusion: every step decodes the whole sequence), starts
``generate`` on a prompt of ``--tokens`` tokens, and gets SIGINT 0.5 s later -- inside the
prefill. The latency is from the signal to ``generate`` returning with
``stop_reason == "interrupted"``. Prints a markdown table (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import sys, time
import numpy as np
from llamadiff import Generator
path, n_tokens = sys.argv[1], int(sys.argv[2])
gen = Generator(path, n_ctx=n_tokens + 64, n_threads=2)
rng = np.random.default_rng(0)
mask = gen.model.mask_token_id
prompt = [int(t) for t in rng.integers(0, 200, n_tokens) if t != mask]
gen.generate(prompt[:64], max_new_tokens=4, stop=[])            # warm: context made
t0 = time.time()
print("START", t0, flush=True)
out = gen.generate(prompt, max_new_tokens=8, stop=[])
print("END", time.time(), out.stop_reason, time.time() - t0, flush=True)
"""


def one_run(model: Path, n_tokens: int, delay: float) -> tuple:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(model), str(n_tokens)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert line and line[0] == "START", line
    time.sleep(delay)
    t_signal = time.time()
    proc.send_signal(signal.SIGINT)
    end = proc.stdout.readline().split()
    proc.wait(timeout=600)
    assert end and end[0] == "END", end
    return float(end[1]) - t_signal, end[2]


def uninterrupted(model: Path, n_tokens: int) -> float:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model), str(n_tokens)],
                          capture_output=True, text=True, timeout=1200)
    return float(proc.stdout.split("END", 1)[1].split()[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=7700)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from llamadiff import testing
    from llamadiff.bench import SHAPE

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("qwen3", "llada"):
            shape = SHAPE if arch == "qwen3" else testing.ModelShape(
                **{**SHAPE.__dict__, "n_head_kv": SHAPE.n_head, "head_dim": SHAPE.n_embd // SHAPE.n_head})
            path = testing.write_model(Path(tmp) / f"{arch}.gguf", arch, shape=shape, dtype="f16")
            full = uninterrupted(path, args.tokens)
            runs = [one_run(path, args.tokens, 0.5) for _ in range(args.repeats)]
            lat = [r[0] for r in runs]
            rows.append(f"| {arch} | {args.tokens} | {full:.1f} | {statistics.median(lat):.2f} "
                        f"({min(lat):.2f}-{max(lat):.2f}) | {', '.join(sorted({r[1] for r in runs}))} |")
    print("| model | prompt tokens | uninterrupted generate, s | SIGINT to return, s (median, min-max) "
          "| stop_reason |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

"""Memory over many calls: resident set size after N generations of each kind.

    python benchmarks/leak_check.py [--calls 1000]

One process, one Generator per family (the shipped default models), the same prompt again
and again: ``generate``, a ``stream`` read to the end, a ``stream`` abandoned after its
first chunk, a batch of 4 prompts, a full-diffusion ``generate``, and the error paths (a
refused option, a too-long prompt). RSS (VmRSS) is read after a warm-up of 50 calls and
after ``--calls`` calls; a leak of even 100 bytes per call shows as ~0.1 MB per 1,000.
Prints a markdown table (docs/RELIABILITY.md).
"""

from __future__ import annotations

import argparse
import gc


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    from llamadiff import Generator, default_model

    block = Generator(default_model("block"), n_ctx=512, n_threads=1)
    full = Generator(default_model("full"), n_ctx=512, n_threads=1)

    def abandoned_stream():
        it = block.stream("sort 93715=", max_new_tokens=16)
        next(it)
        it.close()

    def refused():
        for call in (lambda: block.generate("sort 1=", temperature=float("nan")),
                     lambda: block.generate("x" * 600, max_new_tokens=8)):
            try:
                call()
            except ValueError:
                pass

    kinds = {
        "generate (block)": lambda: block.generate("sort 93715=", max_new_tokens=16),
        "stream to the end": lambda: list(block.stream("rev python=", max_new_tokens=16)),
        "stream abandoned": abandoned_stream,
        "batch of 4": lambda: block.generate(["47+38=", "sort 93715=", "rev abc=", "copy k9x2="],
                                             max_new_tokens=16),
        "generate (full)": lambda: full.generate("47+38=", max_new_tokens=17),
        "refused calls": refused,
    }
    print(f"| calls | kind | RSS after 50 calls, MB | after {args.calls}, MB | growth, KB per 1,000 calls |")
    print("|---|---|---|---|---|")
    for name, call in kinds.items():
        for _ in range(50):
            call()
        gc.collect()
        before = rss_mb()
        for _ in range(args.calls - 50):
            call()
        gc.collect()
        after = rss_mb()
        per_k = (after - before) * 1024 / max(1, args.calls - 50) * 1000
        print(f"| {args.calls} | {name} | {before:.1f} | {after:.1f} | {per_k:.0f} |", flush=True)


if __name__ == "__main__":
    main()

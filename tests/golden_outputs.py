"""Golden outputs: the tokens of every decoding configuration, frozen before a refactor.

    python tests/golden_outputs.py --record     # write tests/golden/outputs.json
    python tests/golden_outputs.py              # compare, print the cases that differ

Every block strategy, full-diffusion algorithm, schedule, cache mode, parallel mode, RNG mode,
CFG, sampling setting and batch size, on the six test architectures' tiny models and on both
shipped models. A refactor of the generation loops must keep every case identical (the
recording says which commit made it). Exact numerics (F32 KV cache, flash attention off, one
thread) keep the tokens independent of the machine's thread count.

tests/test_golden.py runs the comparison on every test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / "outputs.json"
EXACT = dict(type_k="f32", type_v="f32", flash_attn=False, n_threads=1)
# the architectures the outputs were frozen on (tests/test_bodies.py covers the later ones)
GOLDEN_ARCHS = ("qwen3", "llada", "dream", "qwen3moe", "llada-moe", "rnd1")

BLOCK_PROMPTS = [[104, 101, 108, 108, 111], [5, 6, 7], [8, 9, 10, 11, 12, 13, 14]]
FULL_PROMPT = "hello world"
STRATEGIES = ("sequential", "low_confidence_static", "low_confidence_dynamic", "entropy_bounded")
ALGORITHMS = ("origin", "entropy", "margin", "random", "confidence")


def block_cases() -> list:
    out = []
    for strategy in STRATEGIES:
        for block_length, steps in ((4, 4), (4, 2), (8, 8)):
            for cache in (True, False):
                out.append(dict(strategy=strategy, block_length=block_length, steps=steps, cache=cache))
    for sampling in (dict(temperature=0.8, seed=3), dict(temperature=1.0, top_k=5, seed=4),
                     dict(temperature=0.7, top_p=0.9, seed=5)):
        out.append(dict(block_length=4, **sampling))
    out.append(dict(block_length=4, strategy="low_confidence_dynamic", threshold=0.3))
    out.append(dict(block_length=4, strategy="entropy_bounded", eb_gamma=2.0))
    return out


def full_cases(arch: str) -> list:
    schedule = dict(eps=1e-3) if arch in ("dream", "rnd1") else dict(block_length=8)
    out = []
    for algorithm in ALGORITHMS:
        for rng in ("counter", "llama.cpp"):
            out.append(dict(algorithm=algorithm, rng=rng, steps=16, **schedule))
    for cache in ("prefix", "dual"):
        for parallel in (None, "threshold", "factor"):
            out.append(dict(block_length=8, steps=16, cache=cache, parallel=parallel))
    out.append(dict(block_length=8, steps=16, cfg_scale=1.5))
    out.append(dict(eps=1e-3, steps=16, temperature=0.9, seed=7))
    out.append(dict(block_length=8, steps=16, temperature=1.0, add_gumbel_noise=True, alg_temp=0.5, seed=8))
    return out


def run_all(sampler: str = "auto") -> dict:
    """Case id -> generated tokens (or the error's type and message), sampled by ``sampler``."""
    from llamadiff import Generator, default_model, testing

    results: dict = {}

    def record(key, call):
        try:
            out = call()
            results[key] = [r.tokens for r in out] if isinstance(out, list) else out.tokens
        except Exception as exc:      # an error is an output too
            results[key] = f"{type(exc).__name__}: {exc}"

    with tempfile.TemporaryDirectory() as tmp:
        for arch in GOLDEN_ARCHS:
            path = testing.write_model(Path(tmp) / f"{arch}.gguf", arch, seed=0)
            with Generator(path, n_ctx=256, sampler=sampler, **EXACT) as gen:
                if gen.model.family == "block":
                    for case in block_cases():
                        key = f"{arch} {json.dumps(case, sort_keys=True)}"
                        record(key, lambda: gen.generate(BLOCK_PROMPTS[0], max_new_tokens=16, stop=[], **case))
                    for n_parallel in (1, 2, 3):
                        record(f"{arch} batch n_parallel={n_parallel}",
                               lambda: gen.generate(BLOCK_PROMPTS, max_new_tokens=12, stop=[],
                                                    n_parallel=n_parallel))
                else:
                    for case in full_cases(arch):
                        key = f"{arch} {json.dumps(case, sort_keys=True)}"
                        record(key, lambda: gen.generate(FULL_PROMPT, max_new_tokens=16, stop=[], **case))
                    record(f"{arch} list", lambda: gen.generate([FULL_PROMPT, "abc"], max_new_tokens=16,
                                                                stop=[], steps=16))
        for family, prompts, n in (("block", ["47+38=", "sort 93715=", "rev python=", "copy k9x2=",
                                              "a1b7c4:b="], 16),
                                   ("full", ["47+38=", "sort 93715=", "rev python="], 17)):
            with Generator(default_model(family), n_ctx=512, sampler=sampler, **EXACT) as gen:
                for prompt in prompts:
                    record(f"default-{family} {prompt}", lambda: gen.generate(prompt, max_new_tokens=n))
                if family == "full":
                    record("default-full dual threshold", lambda: gen.generate(
                        prompts[0], max_new_tokens=n, cache="dual", parallel="threshold"))
                else:
                    record("default-block batch", lambda: gen.generate(prompts, max_new_tokens=n, n_parallel=4))
    return results


def compare(recorded: dict, now: dict) -> list:
    keys = sorted(set(recorded) | set(now))
    return [k for k in keys if recorded.get(k) != now.get(k)]


def main(argv) -> int:
    now = run_all()
    if "--record" in argv:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=HERE).stdout.strip()
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"recorded_at": commit, "outputs": now}, indent=0, sort_keys=True) + "\n")
        print(f"recorded {len(now)} cases at {commit} in {GOLDEN}")
        return 0
    recorded = json.loads(GOLDEN.read_text())["outputs"]
    diff = compare(recorded, now)
    for key in diff:
        print(f"DIFFERS {key}\n  recorded {recorded.get(key)}\n  now      {now.get(key)}")
    print(f"{len(now)} cases, {len(diff)} differ")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

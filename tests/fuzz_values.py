"""Value fuzzing of model files: valid GGUFs with one hyper-parameter set to a hostile value.

Byte flips mostly break the file's structure, which the loader rejects; a *value* that is
well-formed but absurd (a NaN norm epsilon, a zero RoPE base, a head count that does not
divide the projection) passes every structural check and used to reach a GGML_ASSERT --
a process abort -- or NaN logits. Here every numeric metadata key of each test
architecture, plus the RoPE-scaling and per-layer keys a file may add, is set to 0, -1,
NaN, +-inf and huge values in turn; each case is loaded and generated with in a worker
process, and the parent records how it ended.

    python tests/fuzz_values.py [--archs qwen3,llada] [--out report.json]

Allowed endings: a llamadiff error (ModelLoadError, UnsupportedModelError, ContextError,
DecodeError, ...) or a normal generation. Anything else -- a signal, a hang, another
exception type -- is a failure. Used by tests/test_fuzz_values.py (all cases, every run).
"""

from __future__ import annotations

import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from gguf import GGUFValueType as T

ARCHS = ("qwen3", "qwen3moe", "llada", "llada-moe", "dream", "rnd1", "qwen2", "llama", "bailingmoe2", "mistral3")
F32_VALUES = (0.0, -1.0, math.nan, math.inf, -math.inf, 3.0e38, 1e-40)
U32_VALUES = (0, 2 ** 32 - 1, 2 ** 31, 65536)
# type confusion: an integer key written as a negative int32 or a NaN float32
CONFUSED = ((-1, T.INT32), (math.nan, T.FLOAT32))
CASE_TIMEOUT = 60.0      # seconds one case may take before it counts as a hang


def extra_keys(arch: str) -> dict:
    """Keys a real file may carry that the test writers leave out: RoPE scaling, experts, the
    llama-4 attention temperature, and the model defaults of generation (``diffusion.*``)."""
    A = arch + "."
    return {"diffusion.block_length": T.UINT32, "diffusion.steps": T.UINT32, "diffusion.gen_length": T.UINT32,
            "diffusion.threshold": T.FLOAT32, "diffusion.editing_threshold": T.FLOAT32,
            "diffusion.max_post_steps": T.UINT32, A + "attention.temperature_scale": T.FLOAT32,
            A + "rope.scaling.factor": T.FLOAT32, A + "rope.scaling.attn_factor": T.FLOAT32,
            A + "rope.scale_linear": T.FLOAT32, A + "rope.scaling.original_context_length": T.UINT32,
            A + "attention.layer_norm_epsilon": T.FLOAT32, A + "expert_group_count": T.UINT32,
            A + "expert_group_used_count": T.UINT32, A + "rope.dimension_count": T.UINT32,
            A + "attention.key_length": T.UINT32, A + "attention.value_length": T.UINT32}


# Settings: every generation option and Generator argument, set to hostile values.
HOSTILE = (0, -1, 1, 2 ** 31, 2 ** 63, 10 ** 30, 0.5, -0.5, math.nan, math.inf, -math.inf, 1e30, True,
           "", "x", None, [], [1, 2], [None], {})

# Tokenizer metadata (llamadiff.vocab_check): values the vocabulary cannot serve, which llama.cpp
# would load and quietly misuse. Each must be refused at load.
N_TOKENS = 276                   # the test writers' byte vocabulary


def tokenizer_cases(arch: str) -> list:
    n = N_TOKENS
    out = []
    for key in ("bos_token_id", "eos_token_id", "eot_token_id", "mask_token_id", "padding_token_id"):
        out += [{"arch": arch, "key": f"tokenizer.ggml.{key}", "value": v, "type": int(T.UINT32), "refused": True}
                for v in (n, n + 1, 2 ** 31)]
    for model in ("bert", "t5"):
        out.append({"arch": arch, "key": "tokenizer.ggml.model", "value": model, "type": int(T.STRING),
                    "refused": True})
    out += [
        {"arch": arch, "key": "tokenizer.ggml.merges", "value": None, "type": int(T.ARRAY), "refused": True},
        {"arch": arch, "key": "tokenizer.ggml.merges", "value": [f"zz{i}qq" for i in range(16)],
         "type": int(T.ARRAY), "refused": True},
        {"arch": arch, "key": "tokenizer.ggml.token_type", "value": [1] * (n - 1) + [99], "type": int(T.ARRAY),
         "refused": True},
        {"arch": arch, "key": "tokenizer.ggml.token_type", "value": [3] * n, "type": int(T.ARRAY), "refused": True},
        {"arch": arch, "key": "tokenizer.ggml.token_type", "value": [5] * n, "type": int(T.ARRAY), "refused": True},
        {"arch": arch, "key": "tokenizer.ggml.tokens", "value": [""] * n, "type": int(T.ARRAY), "refused": True},
    ]
    return out


# Chat templates from the file (llamadiff.chat): loops and huge strings. Each must end as a
# ChatTemplateError within the render's bounds.
HOSTILE_TEMPLATES = (
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ lipsum(1000000) }}",
    "{{ 'x'|center(500000000) }}",
    "{{ '%01000000000d' % 5 }}",
    "{{ '{:>1000000000}'.format(1) }}",
    "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
)
GENERATOR_ARGS = ("n_ctx", "n_batch", "n_threads", "n_gpu_layers", "flash_attn", "type_k", "type_v",
                  "sampler")


def setting_cases(archs=("qwen3", "llada")) -> list:
    import dataclasses

    from llamadiff import GenerationConfig

    names = [f.name for f in dataclasses.fields(GenerationConfig)]
    out = []
    for arch in archs:
        for name in names:
            out += [{"arch": arch, "option": name, "value": _encode(v)} for v in HOSTILE]
        for name in GENERATOR_ARGS:
            out += [{"arch": arch, "argument": name, "value": _encode(v)} for v in HOSTILE]
    return out


def _encode(value):
    return {"nan": True} if isinstance(value, float) and math.isnan(value) else value


def _decode(value):
    return math.nan if isinstance(value, dict) and value.get("nan") else value


def cases(archs=ARCHS) -> list:
    """Every (arch, key, value, GGUF type) case, in a stable order."""
    from llamadiff import testing
    from llamadiff._core import read_gguf_header

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            path = testing.write_model(Path(tmp) / f"{arch}.gguf", arch)
            meta, _ = read_gguf_header(path)
            keys = {}
            for key, value in meta.items():
                if key == "general.architecture" or isinstance(value, (bool, str, list)):
                    continue
                keys[key] = T.FLOAT32 if isinstance(value, float) else T.UINT32
            for key, vtype in extra_keys(arch).items():
                keys.setdefault(key, vtype)
            for key, vtype in sorted(keys.items()):
                values = [(v, vtype) for v in (F32_VALUES if vtype == T.FLOAT32 else U32_VALUES)]
                if vtype == T.UINT32:
                    values += list(CONFUSED)
                out += [{"arch": arch, "key": key, "value": _encode(v), "type": int(t)} for v, t in values]
            # per-layer arrays (the test models have 2 layers): non-uniform, zero, too large
            for key, arrays in ((f"{arch}.attention.head_count_kv", ([2, 0], [2, 4], [2, 1])),
                                (f"{arch}.attention.head_count", ([4, 2], [4, 0])),
                                (f"{arch}.expert_used_count", ([2, 0], [2, 4], [2, 1])),
                                (f"{arch}.feed_forward_length", ([128, 0], [128, 2 ** 31]))):
                out += [{"arch": arch, "key": key, "value": a, "type": int(T.ARRAY)} for a in arrays]
            # RoPE scaling on: the YaRN path reads more values
            for factor in (0.5, 4.0, math.nan):
                out.append({"arch": arch, "key": f"{arch}.rope.scaling.type", "value": "yarn",
                            "type": int(T.STRING), "also": {f"{arch}.rope.scaling.factor": _encode(factor)}})
            out += tokenizer_cases(arch)
        for template in HOSTILE_TEMPLATES:
            out.append({"arch": "qwen3", "key": "tokenizer.chat_template", "value": template,
                        "type": int(T.STRING), "chat": True})
    return out


# --------------------------------------------------------------------------- the worker


def _run_case(case: dict, tmp: Path) -> str:
    from llamadiff import Generator, LlamaDiffError, testing

    if case["arch"] == "selftest":     # proves the parent notices a dead or stuck worker
        if case["key"] == "abort":
            os.abort()
        time.sleep(3600)
    if "option" in case or "argument" in case:
        return _run_setting(case, tmp)

    value = _decode(case["value"])
    vtype = T(case["type"])
    meta = {case["key"]: None if value is None else (value, vtype)}
    for key, extra in case.get("also", {}).items():
        meta[key] = (_decode(extra), T.FLOAT32)
    path = tmp / "case.gguf"
    try:
        testing.write_model(path, case["arch"], metadata=meta)
    except Exception as exc:            # the writer refuses (e.g. a value gguf cannot encode)
        return f"unwritable: {type(exc).__name__}"
    try:
        with Generator(path, n_ctx=64, n_threads=2) as gen:
            prompt = [{"role": "user", "content": "hello"}] if case.get("chat") else "hello"
            out = gen.generate(prompt, max_new_tokens=4, stop=[])
            if case.get("refused") or case.get("chat"):
                raise RuntimeError(f"not refused: {case['key']} = {str(value)[:60]!r} generated")
            return f"generated: {len(out.tokens)} tokens"
    except LlamaDiffError as exc:
        if case.get("chat") and type(exc).__name__ != "ChatTemplateError":
            raise RuntimeError(f"a hostile template ended as {type(exc).__name__}, not ChatTemplateError")
        if case.get("refused") and type(exc).__name__ != "ModelLoadError":
            raise RuntimeError(f"tokenizer metadata refused as {type(exc).__name__}, not at load")
        return f"{type(exc).__name__}"


def _run_setting(case: dict, tmp: Path) -> str:
    """One option (or Generator argument) set to a hostile value: a clear ValueError /
    TypeError (llamadiff's errors derive from them) or a normal result."""
    from llamadiff import Generator, testing

    path = tmp / f"{case['arch']}-base.gguf"
    if not path.exists():
        testing.write_model(path, case["arch"])
    value = _decode(case["value"])
    args = {"n_ctx": 128, "n_threads": 1}
    options = {"max_new_tokens": 8, "stop": []}
    if "argument" in case:
        args[case["argument"]] = value
    else:
        options[case["option"]] = value
    try:
        with Generator(path, **args) as gen:
            out = gen.generate("hello", **options)
            return f"generated: {out.stop_reason}"
    except (ValueError, TypeError) as exc:
        if not str(exc):
            raise RuntimeError(f"{type(exc).__name__} without a message")
        name = case.get("option") or case.get("argument")
        if name not in str(exc):
            raise RuntimeError(f"{type(exc).__name__} that does not name {name}: {exc}")
        return f"refused {type(exc).__name__}"


def worker(cases_file: str, start: int) -> None:
    todo = json.loads(Path(cases_file).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(start, len(todo)):
            print(f"BEGIN {i}", flush=True)
            try:
                outcome = "ok " + _run_case(todo[i], Path(tmp))
            except BaseException as exc:     # not a llamadiff error: reported as a failure
                outcome = f"bad {type(exc).__name__}: {str(exc)[:200]}"
            print(f"END {i} {outcome}", flush=True)


# --------------------------------------------------------------------------- the parent


def campaign(todo: list, case_timeout: float = CASE_TIMEOUT) -> dict:
    """Run every case in worker processes; a crash or hang costs one worker, not the run."""
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        cases_file = Path(tmp) / "cases.json"
        cases_file.write_text(json.dumps(todo))
        start = 0
        while start < len(todo):
            proc = subprocess.Popen([sys.executable, __file__, "--worker", str(cases_file), str(start)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=dict(os.environ, PYTHONFAULTHANDLER="0"))
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout] + [lines.put(None)],
                             daemon=True).start()
            stderr_tail: list = []
            threading.Thread(target=lambda: [stderr_tail.append(l) for l in proc.stderr], daemon=True).start()
            nxt = start                  # the next case this worker will run
            while nxt < len(todo):
                try:
                    line = lines.get(timeout=case_timeout)
                except queue.Empty:          # no progress: the case in flight hangs
                    proc.kill()
                    results[nxt] = "hang"
                    nxt += 1
                    break
                if line is None:             # the worker ended; if mid-case, that case killed it
                    rc = proc.wait()
                    results[nxt] = f"died (exit {rc}): {''.join(stderr_tail)[-300:].strip()}"
                    nxt += 1
                    break
                kind, index, *rest = line.rstrip("\n").split(" ", 2)
                if kind == "END":
                    results[int(index)] = " ".join(rest)
                    nxt = int(index) + 1
            proc.wait()
            start = nxt
    return results


def summary(todo: list, results: dict) -> dict:
    failures = [dict(todo[i], outcome=results.get(i, "not run")) for i in range(len(todo))
                if not results.get(i, "").startswith("ok ")]
    outcomes: dict = {}
    for i in range(len(todo)):
        word = results.get(i, "not run").split(":")[0]
        outcomes[word] = outcomes.get(word, 0) + 1
    return {"cases": len(todo), "outcomes": outcomes, "failures": failures}


def main(argv) -> int:
    if argv[:1] == ["--worker"]:
        worker(argv[1], int(argv[2]))
        return 0
    archs = ARCHS
    out = None
    if "--archs" in argv:
        archs = tuple(argv[argv.index("--archs") + 1].split(","))
    if "--out" in argv:
        out = argv[argv.index("--out") + 1]
    todo = cases(archs) + setting_cases()
    t0 = time.time()
    report = summary(todo, campaign(todo))
    report["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(report, indent=1, default=str)
    if out:
        Path(out).write_text(text)
    print(text)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The GPU speed matrix (scripts/device_check.sh matrix): every lever of the decode on one model
shape, each measured the same way.

    python benchmarks/gpu_matrix.py write  --dir D [--device cuda|cpu]
    python benchmarks/gpu_matrix.py single --dir D [--types f16,q8_0,q4_k_m] [--samplers device,cuda]
    python benchmarks/gpu_matrix.py batch  --dir D --model NAME [--parallel 1,8,16,32,64,128] [--samplers ...]
    python benchmarks/gpu_matrix.py replay --dir D [--sequences 2,3,16]

``write``: the random SDAR-1.7B-shaped model (28 layers, 2048 wide, vocabulary 151,936, tied
output; ``--device cpu``: a 2-layer rehearsal model with the same vocabulary) in F16, its fused
copy (``llamadiff.fuse``: one q/k/v and one gate/up matrix per layer), and Q8_0 / Q4_K_M of
each (quantised from the F16 files, so the fused ones quantise whole fused matrices).

``single``: one sequence, block 4 / steps 4, gen 256, greedy, 32-token prompt: tok/s (median
of 3 after a warm-up) for every type x fused/unfused x sampler, with the split of a step into
decode, sampling and the rest, and whether the tokens equal the first sampler's. The kernel
route (``LLAMADIFF_CUDA_MMVF_COLS``) and CUDA graphs (``GGML_CUDA_DISABLE_GRAPHS``) are read
once per process: the device check runs ``single`` again under each setting.

``batch``: twice ``--parallel`` prompts (16 to 128), gen 32, block 4 / steps 4 at each
``--parallel``: committed tok/s,
decode / sampling / host ms per step and per sequence-step, the logits bytes that reached
the host per step, graphs reused, and tokens equal to the first sampler's.

``replay``: the several-sequence CUDA-graph fault (docs/BENCHMARKS.md): a small F16 model,
``fixed_step_shape=True`` for 2 / 3 / 16 sequences (LLAMADIFF_BATCH_GRAPH_REPLAY=1), each in a
child process under each candidate setting (PDL off, no in-place graph update, no graphs
around cuBLAS GEMMs, llama.cpp graph reuse off, graphs off as the control): exit status,
tokens equal to the control's, the last line of stderr.

Every command prints JSON lines (``{"kind": ..., ...}``) and a Markdown table; ``--json F``
appends the lines to F.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from device_check import REHEARSAL, SDAR_1_7B, testing  # noqa: E402  (standalone testing module)

TYPES = ("f16", "q8_0", "q4_k_m")
PROMPT = list(range(32, 64))
REPLAY_SHAPE = testing.ModelShape(n_embd=512, n_layer=2, n_head=8, n_head_kv=4, head_dim=64, n_ff=1536,
                                  n_ctx_train=4096, n_vocab_pad=32768 - 276)
# the candidate settings of the replay search: (name, environment)
REPLAY_VARIANTS = (
    ("graphs off (control)", {"GGML_CUDA_DISABLE_GRAPHS": "1"}),
    ("as is", {}),
    ("PDL off", {"GGML_CUDA_PDL": "0"}),
    ("no in-place graph update", {"GGML_CUDA_GRAPH_NO_EXEC_UPDATE": "1"}),
    ("no graphs around cuBLAS", {"GGML_CUDA_GRAPH_NO_CUBLAS": "1"}),
    ("llama.cpp graph reuse off", {"LLAMA_GRAPH_REUSE_DISABLE": "1"}),
    ("flash attention off", {"LLAMADIFF_REPLAY_FA": "0"}),
)


def name(kind: str, fused: bool) -> str:
    return f"sdar-1.7b-{kind}{'-fused' if fused else ''}.gguf"


def emit(record: dict, out) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as fh:
            fh.write(line + "\n")


def settings() -> dict:
    keys = ("LLAMADIFF_CUDA_MMVF_COLS", "GGML_CUDA_DISABLE_GRAPHS", "GGML_CUDA_PDL")
    return {k: os.environ[k] for k in keys if k in os.environ}


def cmd_write(args) -> int:
    from llamadiff import quantize
    from llamadiff.fuse import fuse_gguf
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    shape = SDAR_1_7B if args.device == "cuda" else REHEARSAL
    t = time.perf_counter()
    f16 = d / name("f16", False)
    if not f16.exists():
        testing.write_qwen3(str(f16) + ".part", shape=shape, dtype="f16", seed=0, block_length=4)
        os.replace(str(f16) + ".part", f16)
    fused = d / name("f16", True)
    if not fused.exists():
        fuse_gguf(f16, fused)
    for kind in TYPES[1:]:
        if kind not in args.types.split(","):
            continue
        for is_fused in (False, True):
            dst = d / name(kind, is_fused)
            if not dst.exists():
                quantize(d / name("f16", is_fused), str(dst) + ".part", kind)
                os.replace(str(dst) + ".part", dst)
    replay = d / "replay-f16.gguf"
    if not replay.exists():
        testing.write_qwen3(str(replay) + ".part", shape=REPLAY_SHAPE, dtype="f16", seed=1, block_length=4)
        os.replace(str(replay) + ".part", replay)
    sizes = {p.name: round(p.stat().st_size / 2**20) for p in sorted(d.glob("*.gguf"))}
    emit({"kind": "write", "seconds": round(time.perf_counter() - t, 1), "files_mib": sizes}, args.json)
    return 0


def _split(stats: dict, steps: int) -> dict:
    decode, sampling = stats["decode_ms"], stats["sampling_ms"]
    host = stats["wall_ms"] - decode - sampling - stats.get("context_ms", 0.0)
    return {"decode_ms_per_step": decode / steps, "sampling_ms_per_step": sampling / steps,
            "host_ms_per_step": host / steps}


def cmd_single(args) -> int:
    from llamadiff import Generator, Model
    d = Path(args.dir)
    gpu_layers = -1 if args.device == "cuda" else 0
    opts = dict(max_new_tokens=args.gen, block_length=4, steps=4, strategy="low_confidence_static", stop=[])
    rows = []
    for kind in args.types.split(","):
        for fused in (False, True):
            path = d / name(kind, fused)
            if not path.exists():
                continue
            with Model(path, n_gpu_layers=gpu_layers) as model:
                first = None
                for sampler in args.samplers.split(","):
                    try:
                        with Generator(model, n_ctx=1024, sampler=sampler) as g:
                            g.generate(PROMPT, **opts)                   # warm-up: context, CUDA graphs
                            runs = [g.generate(PROMPT, **opts) for _ in range(args.runs)]
                    except Exception as exc:                            # report, keep going
                        emit({"kind": "single", "type": kind, "fused": fused, "sampler": sampler,
                              "error": f"{type(exc).__name__}: {exc}"}, args.json)
                        continue
                    runs.sort(key=lambda r: r.stats["tokens_per_second"])
                    mid = runs[len(runs) // 2]
                    steps = len(mid.stats["committed_per_step"])
                    first = mid.tokens if first is None else first
                    row = {"kind": "single", "type": kind, "fused": fused, "sampler": sampler,
                           "route": mid.stats["sampler"], "tok_s": mid.stats["tokens_per_second"],
                           "tok_s_min": runs[0].stats["tokens_per_second"],
                           "tok_s_max": runs[-1].stats["tokens_per_second"], "steps": steps,
                           "graphs_reused": mid.stats["graphs_reused"],
                           "logits_to_host_bytes_per_step": mid.stats["logits_to_host_bytes"] / steps,
                           "same_tokens": mid.tokens == first, "settings": settings(), **_split(mid.stats, steps)}
                    rows.append(row)
                    emit(row, args.json)
    print(f"\none sequence, block 4 / steps 4, gen {args.gen}; settings {settings() or 'stock'}")
    print("| type | fused | sampler | tok/s | decode ms/step | sampling ms/step | host ms/step | same tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['type']} | {'yes' if r['fused'] else 'no'} | {r['route']} | {r['tok_s']:.0f} | "
              f"{r['decode_ms_per_step']:.2f} | {r['sampling_ms_per_step']:.3f} | {r['host_ms_per_step']:.3f} | "
              f"{r['same_tokens']} |")
    return 0


def cmd_batch(args) -> int:
    from llamadiff import Generator, Model
    path = Path(args.dir) / args.model
    prompts = [[100 + (i * 37 + j) % 20000 for j in range(16)] for i in range(args.prompts)]
    opts = dict(max_new_tokens=args.gen, block_length=4, steps=4, strategy="low_confidence_static", stop=[])
    rows, first = [], {}
    with Model(path, n_gpu_layers=-1 if args.device == "cuda" else 0) as model:
        for sampler in args.samplers.split(","):
            with Generator(model, n_ctx=512, sampler=sampler) as g:
                for n in [int(x) for x in args.parallel.split(",")]:
                    # two waves of prompts (at least 16, at most --prompts): slots refill once
                    batch = prompts[:min(len(prompts), max(16, 2 * n))]
                    try:
                        g.generate(prompts[:n], n_parallel=n, **opts)        # warm-up: the context
                        t = time.perf_counter()
                        res = g.generate(batch, n_parallel=n, **opts)
                        wall = time.perf_counter() - t
                    except Exception as exc:
                        emit({"kind": "batch", "n_parallel": n, "sampler": sampler,
                              "error": f"{type(exc).__name__}: {exc}"}, args.json)
                        continue
                    b = res[0].stats["batch"]
                    tokens = [r.tokens for r in res]
                    first.setdefault(n, tokens)
                    seq_steps = sum(len(r.stats["committed_per_step"]) for r in res)
                    host = b["wall_ms"] - b["decode_ms"] - b["sampling_ms"]
                    row = {"kind": "batch", "n_parallel": n, "sampler": sampler, "route": g.sampler.name,
                           "tok_s": b["generated_tokens"] / wall, "steps": b["steps"],
                           "decode_ms_per_step": b["decode_ms"] / b["steps"],
                           "sampling_ms_per_step": b["sampling_ms"] / b["steps"],
                           "host_ms_per_step": host / b["steps"], "host_us_per_sequence_step": host * 1e3 / seq_steps,
                           "logits_to_host_bytes_per_step": b["logits_to_host_bytes"] / b["steps"],
                           "graphs_reused": b["graphs_reused"], "prompts": len(batch),
                           "same_tokens_as_first_sampler": sum(a == c for a, c in zip(tokens, first[n])),
                           "settings": settings()}
                    rows.append(row)
                    emit(row, args.json)
    print(f"\nbatched, 2 x n_parallel prompts (16..{args.prompts}), gen {args.gen}, block 4 / steps 4, {args.model}; "
          f"settings {settings() or 'stock'}")
    print("| sampler | n_parallel | tok/s | decode ms/step | sampling ms/step | host ms/step | host µs/seq-step "
          "| logits to host per step | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['route']} | {r['n_parallel']} | {r['tok_s']:.0f} | {r['decode_ms_per_step']:.2f} | "
              f"{r['sampling_ms_per_step']:.2f} | {r['host_ms_per_step']:.2f} | {r['host_us_per_sequence_step']:.1f} | "
              f"{r['logits_to_host_bytes_per_step'] / 1e6:.1f} MB | {r['same_tokens_as_first_sampler']}/{r['prompts']} |")
    return 0


REPLAY_CHILD = r"""
import hashlib, os, sys
from llamadiff import Generator
path, n, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
prompts = [[5 + i, 6, 7, 8, 9, 10, 11, 12] for i in range(n)]
fa = os.environ.get("LLAMADIFF_REPLAY_FA", "auto")
with Generator(path, n_ctx=1024, n_gpu_layers=-1 if device == "cuda" else 0, sampler="device",
               flash_attn={"0": False, "1": True}.get(fa, "auto")) as g:
    out = g.generate(prompts, max_new_tokens=96, block_length=4, stop=[], n_parallel=n, fixed_step_shape=True)
    b = out[0].stats["batch"]
    print("RESULT", b["steps"], b["graphs_reused"], hashlib.sha1(str([r.tokens for r in out]).encode()).hexdigest(), flush=True)
"""


def cmd_replay(args) -> int:
    path = Path(args.dir) / "replay-f16.gguf"
    rows = []
    for n in [int(x) for x in args.sequences.split(",")]:
        control = None
        for label, extra in REPLAY_VARIANTS:
            env = dict(os.environ, LLAMADIFF_BATCH_GRAPH_REPLAY="1", **extra)
            t = time.perf_counter()
            try:
                proc = subprocess.run([sys.executable, "-c", REPLAY_CHILD, str(path), str(n), args.device],
                                      env=env, capture_output=True, text=True, timeout=args.timeout)
                rc, out, err = proc.returncode, proc.stdout, proc.stderr
            except subprocess.TimeoutExpired as exc:
                rc, out, err = "timeout", exc.stdout or "", exc.stderr or ""
                out, err = (out.decode() if isinstance(out, bytes) else out), (err.decode() if isinstance(err, bytes) else err)
            result = next((ln.split()[1:] for ln in out.splitlines() if ln.startswith("RESULT")), None)
            if label.startswith("graphs off"):
                control = result[2] if result else None
            lines = [ln for ln in err.strip().splitlines() if ln.strip()]
            row = {"kind": "replay", "sequences": n, "variant": label, "env": extra, "exit": rc,
                   "seconds": round(time.perf_counter() - t, 1),
                   "steps": int(result[0]) if result else None, "graphs_reused": int(result[1]) if result else None,
                   "same_tokens_as_control": (result[2] == control) if result and control else None,
                   "last_error": lines[-1][-300:] if rc != 0 and lines else ""}
            rows.append(row)
            emit(row, args.json)
            if label == "as is" and rc == 0 and row["same_tokens_as_control"]:
                break           # no fault at this size (neither a crash nor wrong tokens): nothing to search for
    print("\nseveral sequences, fixed_step_shape=True (one step shape), a small F16 model:")
    print("| sequences | setting | exit | graphs reused / steps | same tokens as graphs off | last error |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sequences']} | {r['variant']} | {r['exit']} | {r['graphs_reused']} / {r['steps']} | "
              f"{r['same_tokens_as_control']} | {r['last_error'][:120]} |")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["write", "single", "batch", "replay"])
    ap.add_argument("--dir", required=True, help="where the model files are (or go)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--samplers", default="device,cuda")
    ap.add_argument("--gen", type=int, default=None, help="generated tokens (default: 256; batch: 32)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", default=name("f16", True))
    ap.add_argument("--parallel", default="1,8,16,32,64,128")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--sequences", default="2,3,16")
    ap.add_argument("--timeout", type=int, default=60)
    ap.add_argument("--json", default=None, help="append the JSON lines to this file")
    args = ap.parse_args(argv)
    if args.gen is None:
        args.gen = 32 if args.command == "batch" else 256
    return {"write": cmd_write, "single": cmd_single, "batch": cmd_batch, "replay": cmd_replay}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

"""DiffusionGemma-shaped timings for the GPU device check (scripts/device_check.sh canvas).

    python benchmarks/canvas_device.py write --dir /tmp/dg [--layers 6] [--device cuda|cpu]
    python benchmarks/canvas_device.py run --dir /tmp/dg [--types f16,q8_0,q4_k_m] [--json out.jsonl]

``write``: a random-weight DiffusionGemma of the published 26B-A4B layer shapes -- width 2816,
16 query heads, sliding layers 8 KV heads of 256 (window 1024), full layers 2 KV heads of 512 with
V = K and proportional RoPE, dense GeGLU 2112 plus 128 experts of 704 (top 8) in every layer,
vocabulary 262,144, canvas 256 -- with ``--layers`` layers in the published pattern (five sliding,
one full), F16, then Q8_0 and Q4_K_M copies (llama.cpp's quantizer); ``--published-layout``
leaves out the transposed embedding llamadiff's conversions add, as the published GGUFs do. The weights repeat one
random block (``testing.canvas_weights(tiled=True)``): a pass's cost does not depend on their
values. ``--device cpu`` writes a small model of the same kind to rehearse on.

``run``: per type, prompt 1024, one canvas of ``--steps`` decoder passes (the stop rule off, so
every pass runs): the prompt's prefill, the decoder pass with its sampling and the host work,
per step; and the throughput at a fixed number of accepted tokens per forward A (16 and 20:
vLLM's 15-20), A / step time, for the layers written, and a lower bound for the published 30
layers: the whole step scaled by 30 / layers (which also multiplies the LM head and
self-conditioning products, paid once per step, so the true figure is higher).
The anchor: vLLM serves DiffusionGemma at ~1,300 tok/s at batch 1 on an H200 (FP8).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VOCAB = 262144
PUBLISHED_LAYERS = 30
PATTERN = ("sliding_attention",) * 5 + ("full_attention",)
TYPES = ("f16", "q8_0", "q4_k_m")


def shape(layers: int, device: str):
    from llamadiff import testing
    kinds = tuple(PATTERN[i % len(PATTERN)] for i in range(layers))
    if device == "cpu":
        return testing.CanvasShape(n_embd=256, n_ff=256, n_head=4, n_head_kv=2, head_dim=64, n_head_kv_full=1,
                                   head_dim_full=128, layer_types=kinds, sliding_window=1024, n_expert=8,
                                   n_expert_used=2, n_ff_exp=128, canvas_length=256, n_ctx_train=8192,
                                   n_vocab_pad=32768 - 276)
    return testing.CanvasShape(n_embd=2816, n_ff=2112, n_head=16, n_head_kv=8, head_dim=256, n_head_kv_full=2,
                               head_dim_full=512, layer_types=kinds, sliding_window=1024, n_expert=128,
                               n_expert_used=8, n_ff_exp=704, canvas_length=256, n_ctx_train=262144,
                               n_vocab_pad=VOCAB - 276)


def emit(record: dict, out) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as fh:
            fh.write(line + "\n")


def cmd_write(args) -> int:
    from llamadiff import quantize, testing
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    f16 = d / "dg-f16.gguf"
    if not f16.exists():
        testing.write_diffusion_gemma(str(f16) + ".part", shape=shape(args.layers, args.device), dtype="f16",
                                      std=0.02, tiled=True, embd_t=not args.published_layout)
        os.replace(str(f16) + ".part", f16)
    for kind in TYPES[1:]:
        dst = d / f"dg-{kind}.gguf"
        if not dst.exists():
            quantize(f16, str(dst) + ".part", kind)
            os.replace(str(dst) + ".part", dst)
    (d / "layers").write_text(str(args.layers))
    emit({"kind": "canvas-write", "seconds": round(time.perf_counter() - t, 1),
          "files_mib": {p.name: round(p.stat().st_size / 2**20) for p in sorted(d.glob("dg-*.gguf"))}}, args.json)
    return 0


def cmd_run(args) -> int:
    from llamadiff import Generator
    d = Path(args.dir)
    layers = int((d / "layers").read_text())
    prompt = [5 + (i * 7919) % 260 for i in range(args.prompt)]
    for kind in args.types.split(","):
        path = d / f"dg-{kind}.gguf"
        opts = dict(max_new_tokens=256, steps=args.steps, confidence=0.0, seed=1, stop=[], profile=True)
        with Generator(str(path), n_ctx=args.prompt + 512, n_gpu_layers=-1 if args.device == "cuda" else 0) as g:
            g.generate(prompt, **opts)                       # warm-up
            r = g.generate(prompt, **opts)
        prof, steps = r.stats["profile"], sum(r.stats["steps_per_block"])
        step_ms = (prof["decode_ms"] + prof["sampling_ms"] + prof["python_ms"]) / steps
        rec = {"kind": "canvas", "type": kind, "layers": layers, "prompt": args.prompt, "steps": steps,
               "prefill_ms": round(prof["prefill_ms"], 1), "decode_ms_per_step": round(prof["decode_ms"] / steps, 2),
               "sampling_ms_per_step": round(prof["sampling_ms"] / steps, 2),
               "host_ms_per_step": round(prof["python_ms"] / steps, 2), "step_ms": round(step_ms, 2)}
        for a in (16, 20):
            rec[f"tok_s_at_{a}"] = round(a / (step_ms / 1e3), 1)
            rec[f"tok_s_at_{a}_30_layers_at_least"] = round(a / (step_ms * PUBLISHED_LAYERS / layers / 1e3), 1)
        emit(rec, args.json)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    r = sub.add_parser("run")
    for p in (w, r):
        p.add_argument("--dir", default="/tmp/dg")
        p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
        p.add_argument("--json", default=None)
    w.add_argument("--layers", type=int, default=6)
    w.add_argument("--published-layout", action="store_true",
                   help="without self_cond_embd_t, as the published GGUFs (the self-conditioning product by out_prod)")
    r.add_argument("--types", default=",".join(TYPES))
    r.add_argument("--prompt", type=int, default=1024)
    r.add_argument("--steps", type=int, default=8)
    args = ap.parse_args(argv)
    return cmd_write(args) if args.cmd == "write" else cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())

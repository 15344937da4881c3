"""Where a block-diffusion step spends its time on a GPU (run by scripts/gpu_profile.sh).

The device check (benchmarks/device_check.py) measures the block-4 loop at a third of its
target on an H200. This script splits that gap:

``decode``  the model's decode alone, per call, on the SDAR-1.7B-shaped F16 model:
            - steady: the same n-token decode repeated (ggml-cuda can replay a CUDA graph);
            - the block loop's call pattern (block 4, steps 4): a finished block's store pass
              rides on the next block's first step (8 tokens), and each step asks for the
              rows of the positions still masked (4, 3, 2, 1) -- the graph changes every call;
            - a constant pattern: every step decodes the previous block and the active one
              and asks for all 4 rows, so every call has the same graph.
            Run it twice, with and without GGML_CUDA_DISABLE_GRAPHS=1, for what replay is worth.
``torch``   the same weight stream through PyTorch (cuBLAS, one CUDA graph): 28 layers of
            q/k/v/o/gate/up/down products at 1, 4 and 8 rows, plus the output layer -- what
            reading the weights can cost on this card, against llama.cpp's decode.
``ncu``     one 4-token decode between cuProfilerStart / cuProfilerStop (profile it with
            ``ncu --profile-from-start off``); ``ncu-report CSV`` sums its kernels by name.

``--device cpu`` rehearses the decode phase on a small model (no GPU).
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_check import REHEARSAL, SDAR_1_7B, testing  # noqa: E402

PREFIX = 256


def open_context(model, Context):
    ctx = Context(model, n_ctx=1024, n_batch=512, n_ubatch=512, causal=False)
    ctx.set_block_causal(4)
    ctx.decode(list(range(32, 32 + PREFIX)), logits=False)
    return ctx


def per_call_ms(ctx, calls, repeats=3):
    """Best of `repeats` of the mean time of one pass over `calls` (each: remove-from,
    tokens, first position, output flags), in ms per call."""
    best = float("inf")
    for _ in range(repeats + 1):                     # the first pass warms up
        t = time.perf_counter()
        for rm, tokens, pos, flags in calls:
            ctx.memory_remove(rm, -1)
            ctx.decode(tokens, list(range(pos, pos + len(tokens))), logits=flags)
            if any(flags):
                ctx.logits                           # waits for the device, like a sampler would
        best = min(best, (time.perf_counter() - t) * 1e3 / len(calls))
    ctx.memory_remove(PREFIX, -1)
    return best


def decode_phase(model_path, gpu, out):
    from llamadiff import Context, Model
    mask = 5
    res = {"graphs": "off" if os.environ.get("GGML_CUDA_DISABLE_GRAPHS") else "on", "steady": {}, "loop": {}}
    with Model(model_path, n_gpu_layers=-1 if gpu else 0) as model:
        mask = model.mask_token_id
        ctx = open_context(model, Context)
        for n in (1, 4, 8, 16, 64):
            calls = [(PREFIX, [mask] * n, PREFIX, [True] * n)] * 40
            res["steady"][f"{n} tokens, {n} rows"] = per_call_ms(ctx, calls)
            calls = [(PREFIX, [mask] * n, PREFIX, [False] * (n - 1) + [True])] * 40
            res["steady"][f"{n} tokens, 1 row"] = per_call_ms(ctx, calls)
        blocks = 16
        loop, constant = [], []
        for b in range(blocks):
            pos = PREFIX + 4 * b
            prev = [7, 8, 9, 10]
            # the loop's pattern: store pass + block at the first step, then 3, 2, 1 masked rows
            loop.append((pos - 4, prev + [mask] * 4, pos - 4, [False] * 4 + [True] * 4))
            for k in (3, 2, 1):
                loop.append((pos, [11] * (4 - k) + [mask] * k, pos, [False] * (4 - k) + [True] * k))
            # one graph for every call: previous block + active block, all 4 rows
            for k in (4, 3, 2, 1):
                constant.append((pos - 4, prev + [11] * (4 - k) + [mask] * k, pos - 4, [False] * 4 + [True] * 4))
        for name, calls in (("loop pattern", loop), ("constant pattern", constant)):
            ms = per_call_ms(ctx, calls)
            res["loop"][name] = {"ms_per_call": ms, "tok_s_bound": 1e3 / ms}   # 1 token per step
        ctx.close()
    for k, v in res["steady"].items():
        print(f"[decode graphs {res['graphs']}] steady {k}: {v:.3f} ms", flush=True)
    for k, v in res["loop"].items():
        print(f"[decode graphs {res['graphs']}] {k}: {v['ms_per_call']:.3f} ms per step "
              f"(<= {v['tok_s_bound']:.0f} tok/s before sampling)", flush=True)
    out["decode_graphs_" + res["graphs"]] = res


def torch_phase(shape, out):
    import torch
    dev = "cuda"
    torch.manual_seed(0)
    E, F, L = shape.n_embd, shape.n_ff, shape.n_layer
    q_out, kv_out = shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    mats = [(q_out, E), (kv_out, E), (kv_out, E), (E, q_out), (F, E), (F, E), (E, F)]
    layers = [[torch.randn(o, i, dtype=torch.float16, device=dev) * 0.02 for o, i in mats] for _ in range(L)]
    vocab = shape.n_vocab_pad + 276
    head = torch.randn(vocab, E, dtype=torch.float16, device=dev) * 0.02
    nbytes = sum(w.numel() * 2 for ws in layers for w in ws)
    res = {"weight_bytes": nbytes, "head_bytes": head.numel() * 2}

    def forward(x, rows_out):
        h = x
        for wq, wk, wv, wo, wg, wu, wd in layers:
            q, k, v = h @ wq.T, h @ wk.T, h @ wv.T
            a = q + torch.cat([k, v], dim=1).repeat(1, q.shape[1] // (2 * k.shape[1]))
            h = h + a @ wo.T
            h = h + (torch.nn.functional.silu(h @ wg.T) * (h @ wu.T)) @ wd.T
        return h[-rows_out:] @ head.T

    for rows in (1, 4, 8):
        x = torch.randn(rows, E, dtype=torch.float16, device=dev)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                forward(x, rows)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            forward(x, rows)
        for _ in range(5):
            g.replay()
        times = []
        for _ in range(30):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        ms = sorted(times)[len(times) // 2]
        gbs = (nbytes + head.numel() * 2) / ms / 1e6
        res[f"{rows} rows"] = {"ms": ms, "GB_s": gbs}
        print(f"[torch] {rows} rows, layers + output layer ({(nbytes + head.numel() * 2) / 1e9:.2f} GB of "
              f"weights), one CUDA graph: {ms:.3f} ms ({gbs:.0f} GB/s)", flush=True)
    out["torch"] = res


def ncu_target(model_path, rows):
    from llamadiff import Context, Model
    cuda_drv = ctypes.CDLL("libcuda.so.1")
    with Model(model_path, n_gpu_layers=-1) as model:
        ctx = open_context(model, Context)
        tokens = [model.mask_token_id] * rows
        for _ in range(3):
            ctx.memory_remove(PREFIX, -1)
            ctx.decode(tokens, list(range(PREFIX, PREFIX + rows)), logits=True)
            ctx.logits
        ctx.memory_remove(PREFIX, -1)
        assert cuda_drv.cuProfilerStart() == 0
        ctx.decode(tokens, list(range(PREFIX, PREFIX + rows)), logits=True)
        ctx.logits
        assert cuda_drv.cuProfilerStop() == 0
        ctx.close()


def ncu_report(path, out):
    """Kernel time by name from `ncu --csv --metrics gpu__time_duration.sum` output."""
    lines = Path(path).read_text(errors="replace").splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        print(f"[ncu] no CSV in {path}:\n" + "\n".join(lines[-15:]))
        return
    by_name = defaultdict(lambda: [0, 0.0])
    total, n = 0.0, 0
    for row in csv.DictReader(lines[start:]):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        v = float(row["Metric Value"].replace(",", ""))
        unit = row.get("Metric Unit", "ns")
        us = v / 1e3 if unit in ("ns", "nsecond") else v * 1e3 if unit in ("ms", "msecond") else v
        name = row["Kernel Name"].split("(")[0][:70]
        by_name[name][0] += 1
        by_name[name][1] += us
        total += us
        n += 1
    print(f"[ncu] {path}: {n} kernels, {total:.0f} us of kernel time")
    rows = sorted(by_name.items(), key=lambda kv: -kv[1][1])
    for name, (count, us) in rows[:14]:
        print(f"[ncu]   {us:8.0f} us {100 * us / total:5.1f}%  x{count:<4} {name}")
    out[Path(path).stem] = {"kernels": n, "kernel_us": total,
                            "by_name": {k: {"count": c, "us": u} for k, (c, u) in rows}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=["decode", "torch", "ncu", "ncu-report"])
    ap.add_argument("arg", nargs="?", help="ncu: rows of the profiled decode; ncu-report: the CSV")
    ap.add_argument("--model", default="/tmp/sdar-1.7b-shape-f16.gguf")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--json", default=None, help="merge results into this JSON file")
    args = ap.parse_args(argv)
    gpu = args.device == "cuda"
    shape = SDAR_1_7B if gpu else REHEARSAL
    if args.phase in ("decode", "ncu") and not os.path.isfile(args.model):
        testing.write_qwen3(args.model + ".part", shape=shape, dtype="f16", seed=0, block_length=4)
        os.replace(args.model + ".part", args.model)
    out = {}
    if args.json and os.path.isfile(args.json):
        out = json.loads(Path(args.json).read_text())
    if args.phase == "decode":
        decode_phase(args.model, gpu, out)
    elif args.phase == "torch":
        torch_phase(shape, out)
    elif args.phase == "ncu":
        ncu_target(args.model, int(args.arg or 4))
    else:
        ncu_report(args.arg, out)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

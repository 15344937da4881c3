"""Timings for a GPU machine (run by scripts/device_check.sh; needs a CUDA build of llamadiff).

(a) The row sampler alone, rows 4 / 16 / 64 x vocab 151936: CPU (1 thread and all cores),
    GPU from pageable host memory (staged), GPU from pinned host memory (one async copy,
    the case of llama.cpp's own logits buffer when the output layer is on the GPU), GPU
    kernel only (logits already on the device).
(b) Per decode of an n-token block with n output rows on a random Qwen3-1.7B-shaped F16
    model (SDAR-1.7B's shape), fully offloaded: decode + sampling by each route -- "cpu"
    (logits to the host, CPU sampler), "cuda" (logits to the host, back to the GPU
    sampler), "backend" (sampling inside the graph, no logits copy) -- and a decode with
    no output rows as the floor. This is what decides the default route.
(c) End-to-end tok/s of Generator on that model, block 4 / 8 / 16, steps = block, gen 256,
    greedy low_confidence_static, for each route; then block 4 without the KV cache
    (``cache=False``, the reference recompute mode) on the fastest route, for the ratio.
(d) With ``--upstream-cli``: the same full-diffusion run (a LLaDA model of the same shape,
    block 32, as many steps as the CLI takes for ``--gen`` tokens) through upstream
    ``llama-diffusion-cli`` (built against the same ggml) and through llamadiff, for the ratio.

``--device cpu`` rehearses the whole script on a machine without a GPU: the CPU routes only,
and (unless ``--model`` names one) a 2-layer model with the same 151,936-token vocabulary.

Prints a short table last; --json writes every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import math
import sys
import time

import importlib.util
from pathlib import Path

import numpy as np


def _standalone_testing():
    """llamadiff/testing.py without importing the package (the model is written while the
    package is still being built)."""
    spec = importlib.util.spec_from_file_location(
        "llamadiff_testing_standalone", Path(__file__).resolve().parent.parent / "llamadiff" / "testing.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


testing = _standalone_testing()
VOCAB = 151936
SDAR_1_7B = testing.ModelShape(n_embd=2048, n_layer=28, n_head=16, n_head_kv=8, head_dim=128, n_ff=6144,
                               n_ctx_train=4096, tie_embeddings=True, n_vocab_pad=VOCAB - 276)
# the CPU rehearsal's model: the same vocabulary (the sampler's work), little else
REHEARSAL = testing.ModelShape(n_embd=256, n_layer=2, n_head=4, n_head_kv=2, head_dim=64, n_ff=512,
                               n_ctx_train=4096, tie_embeddings=True, n_vocab_pad=VOCAB - 276)
GPU = True          # False under --device cpu: only the CPU routes run
FIXED = None        # the end-to-end runs' fixed_step_shape (None: the default)
T0 = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - T0


def median_us(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e6)
    return statistics.median(times)


def pinned_copy(a: np.ndarray):
    """A pinned host copy of `a` (through torch or cupy, whichever is there), else None."""
    try:
        import torch
        t = torch.empty(a.shape, dtype=torch.float32, pin_memory=True)
        out = t.numpy()
        out[...] = a
        return out, t
    except Exception:
        pass
    try:
        import cupy
        mem = cupy.cuda.alloc_pinned_memory(a.nbytes)
        out = np.frombuffer(mem, dtype=np.float32, count=a.size).reshape(a.shape)
        out[...] = a
        return out, mem
    except Exception:
        return None, None


def sampler_alone(rows_list, results):
    gpu = cuda.CudaRowSampler() if GPU else None
    cpu1 = CpuRowSampler(1)
    cpun = CpuRowSampler(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    for rows in rows_list:
        logits = (rng.normal(size=(rows, VOCAB)) * 3).astype(np.float32)
        skip = VOCAB - 267
        row = {"rows": rows}
        row["cpu_1t_us"] = median_us(lambda: cpu1.sample_logits(logits, skip_token=skip), 20)
        row["cpu_all_us"] = median_us(lambda: cpun.sample_logits(logits, skip_token=skip), 20)
        if gpu is None:
            results.append(row)
            print(f"[sampler] rows {rows}: cpu_1t_us={row['cpu_1t_us']:.1f}, cpu_all_us={row['cpu_all_us']:.1f}",
                  flush=True)
            continue
        row["gpu_pageable_us"] = median_us(lambda: gpu.sample_logits(logits, skip_token=skip), 50)
        row["gpu_pageable_direct"] = gpu.last_timing()[2]
        pinned, keep = pinned_copy(logits)
        if pinned is not None:
            row["gpu_pinned_us"] = median_us(lambda: gpu.sample_logits(pinned, skip_token=skip), 50)
            row["gpu_pinned_direct"] = gpu.last_timing()[2]
        row["gpu_kernel_us"] = gpu.bench_device(logits, 50, skip_token=skip)
        row["gpu_kernel_sampling_t1_topk50_us"] = gpu.bench_device(logits, 20, temperature=1.0, top_k=50, skip_token=skip)
        row["gpu_kernel_sampling_t1_topp09_us"] = gpu.bench_device(logits, 20, temperature=1.0, top_p=0.9, skip_token=skip)
        # agreement on these rows, as a sanity check of the numbers above
        g = gpu.sample_logits(logits, skip_token=skip)
        c = cpu1.sample_logits(logits, skip_token=skip)
        row["argmax_equal"] = bool((g[0] == c[0]).all())
        row["max_rel_p"] = float(np.max(np.abs(g[1] - c[1]) / c[1]))
        results.append(row)
        print(f"[sampler] rows {rows}: " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                                     for k, v in row.items() if k != "rows"), flush=True)


def decode_routes(model: Model, rows_list, results):
    """Decode + sample per route, n rows, over a 256-token prefix (like a block step)."""
    from llamadiff._backend import BackendRowSampler
    mask = model.mask_token_id
    prefix = [int(t) for t in np.random.default_rng(1).integers(0, 256, size=256)]
    gpu = cuda.CudaRowSampler() if GPU else None
    cpu = CpuRowSampler(os.cpu_count() or 1)
    for rows in rows_list:
        row = {"rows": rows}
        block = [mask] * rows
        for route in ROUTES_DECODE:
            with Context(model, n_ctx=512, n_batch=512, n_ubatch=512, causal=False) as ctx:
                ctx.set_block_causal(rows)
                bs = None
                if route == "backend":
                    bs = BackendRowSampler(mask)
                    bs.attach(ctx)
                ctx.decode(prefix, logits=False)
                start = len(prefix)

                def step():
                    ctx.memory_remove(start, -1)
                    ctx.decode(block, list(range(start, start + rows)), logits=route != "floor")
                    if route == "cpu":
                        cpu.sample_logits(np.asarray(ctx.logits), skip_token=mask)
                    elif route == "cuda":
                        gpu.sample_logits(np.asarray(ctx.logits), skip_token=mask)
                    elif route == "backend":
                        bs.read_rows(rows)

                try:
                    row[f"{route}_us"] = median_us(step, 30, warmup=5)
                except Exception as exc:   # report, keep going
                    row[f"{route}_error"] = f"{type(exc).__name__}: {exc}"
                if bs is not None:
                    bs.detach()
        results.append(row)
        print(f"[decode] rows {rows}: " + ", ".join(f"{k}={v:.0f}" if isinstance(v, float) else f"{k}={v}"
                                                    for k, v in row.items() if k != "rows"), flush=True)


def end_to_end(model: Model, blocks, gen: int, results, budget_s: float):
    prompt = list(range(32, 64))
    for block in blocks:
        for route in ROUTES_E2E:
            if elapsed() > budget_s:
                results.append({"block": block, "route": route, "skipped": "time budget"})
                continue
            with Generator(model, n_ctx=1024, sampler=route) as g:
                opts = dict(max_new_tokens=gen, block_length=block, steps=block, strategy="low_confidence_static",
                            stop=[], fixed_step_shape=FIXED)
                g.generate(prompt, **opts)                      # warm-up (context, CUDA graphs)
                runs = [g.generate(prompt, **opts) for _ in range(3)]
            tps = sorted(r.stats["tokens_per_second"] for r in runs)
            st = runs[len(runs) // 2].stats
            row = {"block": block, "route": route, "tok_s": tps[1], "tok_s_min": tps[0], "tok_s_max": tps[-1],
                   "decode_ms": st["decode_ms"], "sampling_ms": st["sampling_ms"], "wall_ms": st["wall_ms"],
                   "decode_calls": st["decode_calls"]}
            results.append(row)
            print(f"[e2e] block {block} {route}: {row['tok_s']:.0f} tok/s (decode {st['decode_ms']:.0f} ms, "
                  f"sampling {st['sampling_ms']:.1f} ms, wall {st['wall_ms']:.0f} ms)", flush=True)


def no_cache(model: Model, gen: int, e2e: list, results: list, budget_s: float):
    """Block 4 without the KV cache (the reference recompute mode) on the fastest block-4 route."""
    done = [r for r in e2e if r.get("block") == 4 and "tok_s" in r]
    if not done or elapsed() > budget_s:
        results.append({"skipped": "time budget" if done else "no block-4 run"})
        return
    best = max(done, key=lambda r: r["tok_s"])
    prompt = list(range(32, 64))
    with Generator(model, n_ctx=1024, sampler=best["route"]) as g:
        opts = dict(max_new_tokens=gen, block_length=4, steps=4, strategy="low_confidence_static", stop=[],
                    cache=False)
        g.generate(prompt, **opts)
        runs = sorted(g.generate(prompt, **opts).stats["tokens_per_second"] for _ in range(3))
    row = {"block": 4, "route": best["route"], "cache": False, "tok_s": runs[1], "cached_tok_s": best["tok_s"],
           "speedup_of_cache": best["tok_s"] / runs[1]}
    results.append(row)
    print(f"[no-cache] block 4 {best['route']}: {runs[1]:.0f} tok/s; the KV cache is {row['speedup_of_cache']:.2f}x "
          "faster", flush=True)


def upstream(exe: str, model_path: str, gen: int, results: list):
    """The same full-diffusion run through upstream llama-diffusion-cli and llamadiff: a LLaDA
    model, a 32-token prompt, block 32, the CLI's step count, greedy, no cache (the CLI
    recomputes the whole sequence every step, as cache="none" does)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import run_cli
    threads = os.cpu_count() or 1
    up = [run_cli(Path(exe), Path(model_path), 32, gen, 32, threads, ("-ngl", "99") if GPU else ())
          for _ in range(2)][-1]                                   # the first run warms the caches
    prompt = "a" * 31                                              # run_cli's prompt: 31 bytes + BOS
    with Generator(model_path, n_ctx=32 + gen + 64, n_threads=threads, n_gpu_layers=-1 if GPU else 0) as g:
        opts = dict(max_new_tokens=gen, block_length=32, steps=up["steps"], stop=[], cache="none")
        g.generate(prompt, **opts)
        runs = [g.generate(prompt, **opts).stats for _ in range(2)]
    ours = min(st["wall_ms"] - st["context_ms"] for st in runs)
    row = {"model": Path(model_path).name, "gen": gen, "steps": up["steps"], "upstream_ms": up["wall_ms"],
           "llamadiff_ms": ours, "speedup": up["wall_ms"] / ours,
           "upstream_tok_s": gen / (up["wall_ms"] / 1e3), "llamadiff_tok_s": gen / (ours / 1e3)}
    results.append(row)
    print(f"[upstream] llada, gen {gen}, {up['steps']} steps, block 32: llama-diffusion-cli {up['wall_ms']:.0f} ms, "
          f"llamadiff {ours:.0f} ms ({row['speedup']:.2f}x)", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/sdar-1.7b-shape-f16.gguf",
                    help="the random SDAR-1.7B-shaped F16 model (written when missing)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--budget-s", type=float, default=240.0, help="skip later end-to-end runs past this")
    ap.add_argument("--write-model-only", action="store_true")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: rehearse on a machine without a GPU (CPU routes, a 2-layer model)")
    ap.add_argument("--upstream-cli", default=None,
                    help="llama-diffusion-cli built against the same ggml: (d) runs when given")
    ap.add_argument("--e2e-only", default=None, metavar="BLOCKS",
                    help="only the end-to-end runs at these block lengths (comma-separated): for a second "
                         "process with other ggml settings, e.g. GGML_CUDA_DISABLE_GRAPHS=1")
    ap.add_argument("--fixed-step-shape", choices=["auto", "on", "off"], default="auto",
                    help="the generation option fixed_step_shape of the end-to-end runs (auto: the "
                         "default, on with the layers on a GPU)")
    ap.add_argument("--llada-model", default=None,
                    help="the LLaDA model of (d) (default: next to --model, written when missing)")
    args = ap.parse_args(argv)
    global GPU, ROUTES_DECODE, ROUTES_E2E, FIXED
    GPU = args.device == "cuda"
    FIXED = {"auto": None, "on": True, "off": False}[args.fixed_step_shape]
    ROUTES_DECODE = ("floor", "cpu", "cuda", "backend") if GPU else ("floor", "cpu")
    ROUTES_E2E = ("cuda", "backend", "cpu") if GPU else ("cpu",)
    shape = SDAR_1_7B if GPU else REHEARSAL
    if not GPU and args.model == ap.get_default("model"):
        args.model = "/tmp/device-check-rehearsal.gguf"
    llada = args.llada_model or str(Path(args.model).with_name(Path(args.model).stem + "-llada.gguf"))

    if not os.path.isfile(args.model) or args.write_model_only:
        t = time.perf_counter()
        testing.write_qwen3(args.model + ".part", shape=shape, dtype="f16", seed=0, block_length=4)
        os.replace(args.model + ".part", args.model)
        print(f"[model] wrote {args.model} in {time.perf_counter() - t:.0f} s", flush=True)
    if args.upstream_cli and (not os.path.isfile(llada) or args.write_model_only):
        t = time.perf_counter()
        llada_shape = testing.ModelShape(**{**vars(shape), "n_head_kv": shape.n_head, "tie_embeddings": False})
        testing.write_model(llada + ".part", "llada", shape=llada_shape, dtype="f16", seed=0)
        os.replace(llada + ".part", llada)
        print(f"[model] wrote {llada} in {time.perf_counter() - t:.0f} s", flush=True)
    if args.write_model_only:
        return 0

    global Context, Generator, Model, cuda, CpuRowSampler
    from llamadiff import Context, Generator, Model, cuda
    from llamadiff._sampling import CpuRowSampler

    info = {"device": cuda.device_name(0) if cuda.device_count() else None, "cuda_runtime": cuda.runtime_version(),
            "cuda_driver": cuda.driver_version(), "ggml_cuda": cuda.ggml_cuda_built(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "mode": args.device, "model": Path(args.model).name}
    print(f"[info] {info}", flush=True)
    if GPU and not cuda.device_count():
        print("[info] no CUDA device: run with --device cpu to rehearse", flush=True)
        return 2
    out = {"info": info, "sampler": [], "decode": [], "e2e": [], "no_cache": [], "upstream": []}
    if args.e2e_only:
        info["env"] = {k: v for k, v in os.environ.items() if k.startswith("GGML_")}
        info["fixed_step_shape"] = args.fixed_step_shape
        print(f"[info] ggml settings: {info['env']}, fixed_step_shape: {args.fixed_step_shape}", flush=True)
        with Model(args.model, n_gpu_layers=-1 if GPU else 0) as model:
            end_to_end(model, [int(b) for b in args.e2e_only.split(",")], args.gen, out["e2e"], args.budget_s)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(out, fh, indent=1)
        return 0
    sampler_alone([4, 16, 64], out["sampler"])
    with Model(args.model, n_gpu_layers=-1 if GPU else 0) as model:
        decode_routes(model, [4, 16, 64], out["decode"])
        end_to_end(model, [4, 8, 16], args.gen, out["e2e"], args.budget_s)
        no_cache(model, args.gen, out["e2e"], out["no_cache"], args.budget_s)
    if args.upstream_cli:
        if elapsed() > args.budget_s:
            out["upstream"].append({"skipped": "time budget"})
        else:
            try:
                upstream(args.upstream_cli, llada, args.gen, out["upstream"])
            except Exception as exc:          # report, keep the rest
                out["upstream"].append({"error": f"{type(exc).__name__}: {exc}"})
                print(f"[upstream] failed: {type(exc).__name__}: {exc}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)

    # the short table, last
    print(f"\n== device check: {info['device']} (CUDA runtime {info['cuda_runtime']}, driver {info['cuda_driver']})")
    print("sampler alone, vocab 151936, median us (incl. transfers unless 'kernel'):")
    print(f"{'rows':>5} {'cpu 1t':>9} {'cpu all':>9} {'gpu pageable':>13} {'gpu pinned':>11} {'gpu kernel':>11}")
    for r in out["sampler"]:
        print(f"{r['rows']:>5} {r['cpu_1t_us']:>9.0f} {r['cpu_all_us']:>9.0f} "
              f"{r.get('gpu_pageable_us', float('nan')):>13.0f} {r.get('gpu_pinned_us', float('nan')):>11.0f} "
              f"{r.get('gpu_kernel_us', float('nan')):>11.0f}")
    print("decode + sample of an n-row block (256-token prefix), median us:")
    print(f"{'rows':>5} {'floor':>8} {'cpu':>8} {'cuda':>8} {'backend':>8}")
    for r in out["decode"]:
        print(f"{r['rows']:>5} " + " ".join(f"{r.get(k + '_us', float('nan')):>8.0f}"
                                            for k in ("floor", "cpu", "cuda", "backend")))
    print(f"end to end, gen {args.gen}, steps = block, tok/s (median of 3):")
    print(f"{'block':>5} {'cuda':>8} {'backend':>8} {'cpu':>8}")
    for block in (4, 8, 16):
        cells = {r["route"]: r.get("tok_s", float("nan")) for r in out["e2e"] if r["block"] == block}
        print(f"{block:>5} " + " ".join(f"{cells.get(k, float('nan')):>8.0f}" for k in ("cuda", "backend", "cpu")))
    for r in out["no_cache"]:
        if "tok_s" in r:
            print(f"block 4 without the KV cache ({r['route']}): {r['tok_s']:.0f} tok/s; with it "
                  f"{r['cached_tok_s']:.0f} ({r['speedup_of_cache']:.2f}x)")
    for r in out["upstream"]:
        if "speedup" in r:
            print(f"upstream llama-diffusion-cli vs llamadiff, llada, gen {r['gen']}, {r['steps']} steps: "
                  f"{r['upstream_tok_s']:.0f} vs {r['llamadiff_tok_s']:.0f} tok/s ({r['speedup']:.2f}x)")
    s64 = next((r for r in out["sampler"] if r["rows"] == 64 and "gpu_pageable_us" in r), None)
    # routes that ran (a route the machine lacks reports NaN)
    e4 = {r["route"]: r["tok_s"] for r in out["e2e"]
          if r["block"] == 4 and math.isfinite(r.get("tok_s", math.nan))}
    if s64:
        best = min(s64.get("gpu_pinned_us", 1e12), s64["gpu_pageable_us"])
        print(f"target: sampler 64 x 151936 incl. transfers <= 1 ms: {best / 1e3:.3f} ms "
              f"({'met' if best <= 1000 else 'NOT met'})")
    if e4:
        best_route = max(e4, key=e4.get)
        print(f"target: block 4 / steps 4 >= 600 tok/s: {e4[best_route]:.0f} ({best_route}) "
              f"({'met' if e4[best_route] >= 600 else 'NOT met'})")
        gpu = {k: v for k, v in e4.items() if k in ("cuda", "backend")}
        if gpu:
            print(f"faster GPU sampling route at block 4: {max(gpu, key=gpu.get)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

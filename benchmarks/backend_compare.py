"""One model in F16, Q8_0 and Q4_K_M on the CPU back end and offloaded to the build's GPU back
end (Vulkan or CUDA): block-diffusion tok/s and greedy-token agreement with the CPU.

    python benchmarks/backend_compare.py --shape small              # lavapipe / a 2-core CPU
    python benchmarks/backend_compare.py --shape sdar --no-cpu      # a real GPU (SDAR-1.7B shape)

Each model is written (random weights, seed 0) and quantised with llamadiff.quantize. Block 4 /
steps 4, greedy, a 32-token prompt, ``--gen`` new tokens; tok/s is the median of ``--runs`` runs
after a warm-up. "same tokens" compares the offloaded run's tokens with the CPU run's (with
``--no-cpu``: with the F16 offloaded run's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_check import SDAR_1_7B, testing  # noqa: E402

SHAPES = {
    # every matrix a whole number of 256-value K-quant super-blocks, small enough for lavapipe
    "small": testing.ModelShape(n_embd=512, n_layer=4, n_head=8, n_head_kv=4, head_dim=64, n_ff=1536,
                                n_ctx_train=4096, tie_embeddings=True, n_vocab_pad=32768 - 276),
    "sdar": SDAR_1_7B,
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--dir", default="/tmp/backend-compare")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--types", default="f16,q8_0,q4_k_m")
    ap.add_argument("--no-cpu", action="store_true", help="offloaded runs only (a big model on a GPU machine)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import llamadiff
    from llamadiff import Generator, quantize
    gpus = [d for d in llamadiff.devices() if d["kind"] in ("gpu", "igpu")]
    print(f"[info] devices: {llamadiff.devices()}", flush=True)
    os.makedirs(args.dir, exist_ok=True)
    shape = SHAPES[args.shape]
    f16 = os.path.join(args.dir, f"{args.shape}-f16.gguf")
    if not os.path.isfile(f16):
        t = time.perf_counter()
        testing.write_qwen3(f16 + ".part", shape=shape, dtype="f16", seed=0, block_length=4)
        os.replace(f16 + ".part", f16)
        print(f"[model] wrote {f16} in {time.perf_counter() - t:.0f} s", flush=True)
    paths = {}
    for ftype in args.types.split(","):
        if ftype == "f16":
            paths[ftype] = f16
            continue
        path = os.path.join(args.dir, f"{args.shape}-{ftype}.gguf")
        if not os.path.isfile(path):
            t = time.perf_counter()
            quantize(f16, path, ftype)
            print(f"[model] {ftype} in {time.perf_counter() - t:.0f} s", flush=True)
        paths[ftype] = path

    prompt = list(range(32, 64))
    opts = dict(max_new_tokens=args.gen, block_length=4, steps=4, strategy="low_confidence_static", stop=[])
    rows = []
    reference = None
    for ftype, path in paths.items():
        for layers in ((-1,) if args.no_cpu else (0, -1)):
            if layers and not gpus:
                continue
            kw = {"n_threads": args.threads} if args.threads else {}
            t = time.perf_counter()
            with Generator(path, n_ctx=512, n_gpu_layers=layers, **kw) as g:
                load_s = time.perf_counter() - t
                first = g.generate(prompt, **opts)
                runs = [g.generate(prompt, **opts) for _ in range(args.runs)]
            tps = sorted(r.stats["tokens_per_second"] for r in runs)
            row = {"type": ftype, "offload": bool(layers), "tok_s": tps[len(tps) // 2], "load_s": load_s,
                   "size_mib": os.path.getsize(path) / 2 ** 20, "tokens": first.tokens}
            if args.no_cpu:
                reference = reference or first.tokens
                row["same_tokens_as"] = "f16 offloaded"
                row["agreement"] = sum(a == b for a, b in zip(first.tokens, reference)) / len(reference)
            elif layers:
                cpu = next(r for r in rows if r["type"] == ftype and not r["offload"])
                row["same_tokens_as"] = "cpu"
                row["agreement"] = sum(a == b for a, b in zip(first.tokens, cpu["tokens"])) / len(cpu["tokens"])
            rows.append(row)
            print(f"[run] {ftype} {'GPU' if layers else 'CPU'}: {row['tok_s']:.1f} tok/s"
                  + (f", {100 * row['agreement']:.0f}% tokens as {row['same_tokens_as']}" if "agreement" in row else ""),
                  flush=True)
    device = gpus[0]["description"] if gpus else "none"
    print(f"\n== {args.shape} shape, block 4 / steps 4, gen {args.gen}, greedy; offload device: {device}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print("| type | MiB | CPU tok/s | offloaded tok/s | offloaded tokens = reference |")
    print("|---|---|---|---|---|")
    for ftype in paths:
        cpu = next((r for r in rows if r["type"] == ftype and not r["offload"]), None)
        gpu = next((r for r in rows if r["type"] == ftype and r["offload"]), None)
        ref = gpu or cpu
        print(f"| {ftype} | {ref['size_mib']:.0f} | {cpu['tok_s']:.1f} |" if cpu else f"| {ftype} | {ref['size_mib']:.0f} | - |",
              end="")
        print(f" {gpu['tok_s']:.1f} | {100 * gpu['agreement']:.0f}% ({gpu['same_tokens_as']}) |" if gpu else " - | - |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": device, "shape": args.shape, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

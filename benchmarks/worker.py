"""One benchmark participant in its own process (so its peak RSS is its own).

    python benchmarks/worker.py '{"impl": "llamadiff", "model": "m.gguf", ...}'

Loads the model (not timed), then answers commands on stdin, one JSON line each:
``{"cmd": "run", ...generation options}`` -> ``{"wall_ms": ..., "tokens": [...], ...}``;
``{"cmd": "exit"}`` -> ``{"peak_rss_mb": ...}``. The first run of each configuration is a
warm-up that the harness discards.

impl: ``llamadiff`` (cache on/off per run), ``floor`` (the same llama_decode calls as a
cached llamadiff run, nothing else), ``torch`` (SDAR's loop on transformers).
"""

import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _llamadiff(spec):
    from llamadiff import Generator

    gen = Generator(spec["model"], n_ctx=spec.get("n_ctx", 4096), n_threads=spec.get("threads"))

    def run(opts):
        out = gen.generate(spec["prompt"], stop=[], profile=True, **opts)
        return {"wall_ms": out.stats["wall_ms"], "tokens": out.tokens, "profile": out.stats["profile"],
                "decode_calls": out.stats["decode_calls"]}
    return run


def _floor(spec):
    from llamadiff import Generator
    from llamadiff.bench import floor_run

    gen = Generator(spec["model"], n_ctx=spec.get("n_ctx", 4096), n_threads=spec.get("threads"))
    schedules = {}

    def run(opts):
        key = json.dumps(opts, sort_keys=True)
        if key not in schedules:      # the decode schedule of this configuration, once
            schedules[key] = gen.generate(spec["prompt"], stop=[], **opts).stats
        ms = floor_run(gen.contexts.single, schedules[key], opts["block_length"])
        return {"wall_ms": ms, "tokens": None}
    return run


def _torch(spec):
    import torch

    import torch_sdar

    torch.set_num_threads(spec.get("threads") or os.cpu_count())
    device = spec.get("device", "cpu")
    model = torch_sdar.load_qwen3(spec["checkpoint"], device=device)

    def run(opts):
        t0 = time.perf_counter()
        res = torch_sdar.generate(model, spec["prompt"], opts["max_new_tokens"], opts["block_length"],
                                  opts["steps"], spec["mask_id"], strategy=opts.get("strategy", "low_confidence_static"))
        if device != "cpu":
            torch.cuda.synchronize()
        return {"wall_ms": (time.perf_counter() - t0) * 1e3, "tokens": res["tokens"],
                "decode_calls": res["forwards"]}
    return run


IMPLS = {"llamadiff": _llamadiff, "floor": _floor, "torch": _torch}


def main():
    spec = json.loads(sys.argv[1])
    run = IMPLS[spec["impl"]](spec)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.pop("cmd") == "exit":
            break
        print(json.dumps(run(cmd)), flush=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)


def peak_rss_mb() -> float:
    """This process's own peak RSS. (ru_maxrss would also count the parent's peak: Linux
    carries the high-water mark of the forked copy across exec.)"""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()

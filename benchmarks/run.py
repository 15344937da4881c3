"""Benchmark harness: llamadiff side by side with the implementations users would pick instead.

    python benchmarks/run.py [--suite quick|full] [--device cpu|cuda] [--runs N] [--out docs/BENCHMARKS.md]

Method: random-weight models of realistic proportions written by ``llamadiff.testing``
(F16, plus Q8_0 / Q4_K_M made with llama.cpp's quantizer); every participant runs in its own
process (peak RSS is per process); one warm-up run per configuration is discarded; timed
runs of the participants are interleaved (A B C, B C A, ...) and ratios are computed pair
by pair, so machine drift cancels; tok/s counts generated tokens only.

Participants:
- llamadiff (``cache=True``), llamadiff without cache (``cache=False``), and the forward-pass
  floor (the same llama_decode calls, nothing else);
- the official PyTorch algorithm: SDAR's block-diffusion loop with a KV cache on
  transformers' Qwen3ForCausalLM (``benchmarks/torch_sdar.py``), on the same random weights
  (F32 safetensors; the GGUF holds them in F16); needs ``pip install .[bench]``;
- upstream ``llama-diffusion-cli``, built from the vendored llama.cpp tree (cached in
  ``build/llama.cpp-tools``), on a ``llada`` model of the same shape (it runs only llama.cpp's
  diffusion architectures; llamadiff's full-diffusion rows arrive with that feature).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import llamadiff  # noqa: E402
from llamadiff import testing  # noqa: E402
from llamadiff import bench  # noqa: E402
from llamadiff.bench import commit, machine  # noqa: E402

SUITES = {
    # ~25M params, vocab 32k: under 5 minutes on 2 cores
    "quick": dict(shape=dict(n_embd=256, n_layer=4, n_head=4, n_head_kv=2, head_dim=64, n_ff=768,
                             tie_embeddings=True, n_vocab_pad=32000 - 276),
                  prompt=32, gen=64, blocks=[4, 8, 16], gen_lengths=[16, 32, 64], runs=3,
                  quants=["q8_0"], llada_block=32, cli_archs=["llada", "dream"], cli_runs=3),
    # ~103M params, Qwen-size vocab (151,936): the numbers in docs/BENCHMARKS.md
    "full": dict(shape=dict(n_embd=512, n_layer=8, n_head=8, n_head_kv=4, head_dim=64, n_ff=1536,
                            tie_embeddings=True, n_vocab_pad=151936 - 276),
                 prompt=32, gen=256, blocks=[4, 8, 16], gen_lengths=[64, 128, 256], runs=5,
                 quants=["q8_0", "q4_k_m"], llada_block=32, cli_archs=["llada"], cli_runs=2),
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- models


def prepare_models(suite: str, cfg: dict, torch_ok: bool) -> dict:
    cache = ROOT / "build" / "bench-models" / suite
    cache.mkdir(parents=True, exist_ok=True)
    shape = testing.ModelShape(**cfg["shape"])
    paths = {"f16": cache / "qwen3-f16.gguf", "llada": cache / "llada-f16.gguf",
             "dream": cache / "dream-f16.gguf", "hf": cache / "hf"}
    if not paths["f16"].exists():
        log(f"writing {paths['f16']}")
        testing.write_model(paths["f16"], "qwen3", shape=shape, dtype="f16", seed=0)
    for q in cfg["quants"]:
        paths[q] = cache / f"qwen3-{q}.gguf"
        if not paths[q].exists():
            llamadiff.quantize(paths["f16"], paths[q], q)
    if not paths["llada"].exists():
        llada_shape = testing.ModelShape(**{**cfg["shape"], "n_head_kv": cfg["shape"]["n_head"]})
        testing.write_model(paths["llada"], "llada", shape=llada_shape, dtype="f16", seed=0)
    if not paths["dream"].exists():
        # Dream sizes q and o as n_embd x n_embd: head_dim * n_head must equal n_embd
        s = cfg["shape"]
        dream_shape = testing.ModelShape(**{**s, "head_dim": s["n_embd"] // s["n_head"]})
        testing.write_model(paths["dream"], "dream", shape=dream_shape, dtype="f16", seed=0)
    if torch_ok and not (paths["hf"] / "model.safetensors").exists():
        log(f"writing {paths['hf']}")
        testing.write_sdar_checkpoint(paths["hf"], shape=shape, seed=0)
    return paths


# --------------------------------------------------------------------------- upstream CLI


def build_diffusion_cli() -> Path | None:
    """Build (once) upstream llama-diffusion-cli from the vendored tree; None if impossible."""
    src = ROOT / "vendor" / "llama.cpp"
    build = ROOT / "build" / "llama.cpp-tools"
    exe = build / "bin" / "llama-diffusion-cli"
    if exe.exists():
        return exe
    if not (src / "examples" / "diffusion").is_dir() or not shutil.which("cmake"):
        log("llama-diffusion-cli: no vendored llama.cpp tree (run pip install first) or no cmake; skipped")
        return None
    log("building llama-diffusion-cli from the vendored tree (once; a few minutes)")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), *gen, "-DCMAKE_BUILD_TYPE=Release",
                    "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_EXAMPLES=ON",
                    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
                    "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DGGML_NATIVE=ON"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-diffusion-cli", "-j", str(os.cpu_count())],
                   check=True, stdout=subprocess.DEVNULL)
    return exe


def run_cli(exe: Path, model: Path, n_prompt: int, gen: int, block: int, threads: int,
            extra: tuple = ()) -> dict:
    """One llama-diffusion-cli generation; its own timer (model load excluded) and peak RSS.

    block > 0: LLaDA's block schedule; block == 0: Dream's timestep (eps) schedule.
    ``extra``: more CLI arguments (e.g. ``("-ngl", "99")`` on a GPU).
    """
    total = n_prompt + gen
    prompt = "a" * max(1, n_prompt - 1)      # ~n_prompt tokens with the byte vocab (+BOS)
    if block:
        # the CLI fills n_ubatch positions (prompt included) in blocks of `block`, and needs
        # the step count to divide evenly across blocks: about one step per generated token
        n_blocks = total // block
        steps = n_blocks * -(-gen // n_blocks)
        schedule = ["--diffusion-block-length", str(block)]
    else:
        steps = gen
        schedule = ["--diffusion-eps", "0.001"]
    cmd = [str(exe), "-m", str(model), "-p", prompt, "--diffusion-steps", str(steps), *schedule,
           "-ub", str(total), "-b", str(total), "-c", str(total + 64), "-t", str(threads), "--temp", "0", *extra]
    with tempfile.TemporaryFile("w+b") as log_file:
        # started from a tiny launcher so that the child's ru_maxrss is its own (Linux carries
        # the parent's high-water mark across fork + exec)
        proc = subprocess.run([sys.executable, "-S", "-c", RSS_LAUNCHER, *cmd], stdout=log_file,
                              stderr=subprocess.STDOUT)
        log_file.seek(0)
        text = log_file.read().decode("utf-8", "replace")   # the generated text is arbitrary bytes
    m = re.search(r"total time: ([0-9.]+)ms", text)
    rss = re.search(r"LLAMADIFF_PEAK_RSS_KB=(\d+)", text)
    if proc.returncode != 0 or not m or not rss:
        raise RuntimeError(f"llama-diffusion-cli failed ({proc.returncode}): {text[-500:]}")
    return {"wall_ms": float(m.group(1)), "peak_rss_mb": int(rss.group(1)) / 1024, "steps": steps}


RSS_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stdout.flush()
print(f"LLAMADIFF_PEAK_RSS_KB={usage.ru_maxrss}", flush=True)
sys.exit(os.waitstatus_to_exitcode(status))
"""


# --------------------------------------------------------------------------- workers


class Worker:
    def __init__(self, spec: dict):
        self.spec = spec
        self.proc = subprocess.Popen([sys.executable, str(HERE / "worker.py"), json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(self.proc.stdout.readline())
        assert ready.get("ready"), ready

    def run(self, **opts) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": "run", **opts}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.spec['impl']} died")
        return json.loads(line)

    def close(self) -> float:
        self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
        self.proc.stdin.flush()
        rss = json.loads(self.proc.stdout.readline())["peak_rss_mb"]
        self.proc.wait()
        return rss


def git_commit() -> str:
    return commit(ROOT)


def summarise(times: list, gen: int) -> dict:
    med = statistics.median(times)
    return {"median_ms": med, "min_ms": min(times), "max_ms": max(times), "tok_s": gen / (med / 1e3),
            "tok_s_range": (gen / (max(times) / 1e3), gen / (min(times) / 1e3))}


def interleaved(workers: dict, configs: list, runs: int, gen_of) -> dict:
    """{(name, config_index): [times]}, runs interleaved with a rotating order."""
    results = {}
    names = list(workers)
    for ci, opts in enumerate(configs):
        for name in names:                                    # warm-up, discarded
            workers[name].run(**opts[name])
        for r in range(runs):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                res = workers[name].run(**opts[name])
                results.setdefault((name, ci), []).append(res)
        log(f"  config {ci + 1}/{len(configs)} done")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=sorted(SUITES), default="quick")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per configuration (>= 5 for reports)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=None, help="markdown file to write the results section into")
    ap.add_argument("--plot", default=None, help="PNG path for the plot (default: next to --out)")
    ap.add_argument("--no-cli", action="store_true", help="skip the upstream llama-diffusion-cli peer")
    args = ap.parse_args(argv)
    cfg = SUITES[args.suite]
    runs = args.runs or cfg["runs"]
    # (found, not imported: the harness process stays small)
    from importlib.util import find_spec
    torch_ok = all(find_spec(m) is not None for m in ("torch", "transformers", "safetensors"))
    if not torch_ok:
        log("PyTorch peer skipped: pip install '.[bench]' (torch, transformers, safetensors)")
    t_start = time.time()
    paths = prepare_models(args.suite, cfg, torch_ok)
    prompt = list(range(300, 300 + cfg["prompt"]))
    mask_id = testing.byte_vocab().mask_id
    n_gpu = -1 if args.device == "cuda" else 0
    base = {"prompt": prompt, "threads": args.threads, "n_ctx": 4096, "n_gpu_layers": n_gpu}

    workers = {"llamadiff": Worker({**base, "impl": "llamadiff", "model": str(paths["f16"])}),
               "floor": Worker({**base, "impl": "floor", "model": str(paths["f16"])})}
    if torch_ok:
        workers["torch"] = Worker({**base, "impl": "torch", "checkpoint": str(paths["hf"]), "mask_id": mask_id,
                                   "device": args.device})

    # 1. block length sweep at the suite's generation length; no-cache through the same worker
    gen = cfg["gen"]
    configs = []
    for block in cfg["blocks"]:
        o = dict(max_new_tokens=gen, block_length=block, steps=block, strategy="low_confidence_static")
        configs.append({"llamadiff": o, "floor": o, "torch": o, "nocache": {**o, "cache": False}})
    workers_nc = dict(workers)
    workers_nc["nocache"] = workers["llamadiff"]          # same process, other mode
    log(f"block sweep: blocks {cfg['blocks']}, gen {gen}, {runs} runs each")
    res = interleaved(workers_nc, configs, runs, None)

    # 2. generated-length sweep at block 4 (cache on) and the quantised models
    len_configs = []
    for g in cfg["gen_lengths"]:
        o = dict(max_new_tokens=g, block_length=4, steps=4, strategy="low_confidence_static")
        len_configs.append({"llamadiff": o, "nocache": {**o, "cache": False}})
    log(f"length sweep: {cfg['gen_lengths']}")
    len_res = interleaved({"llamadiff": workers["llamadiff"], "nocache": workers["llamadiff"]},
                          len_configs, runs, None)
    rss = {name: w.close() for name, w in workers.items()}
    quant = {}
    for q in cfg["quants"]:
        w = Worker({**base, "impl": "llamadiff", "model": str(paths[q])})
        o = dict(max_new_tokens=gen, block_length=4, steps=4, strategy="low_confidence_static")
        w.run(**o)
        quant[q] = summarise([w.run(**o)["wall_ms"] for _ in range(runs)], gen)
        quant[q]["rss"] = w.close()

    # 3. upstream llama-diffusion-cli on llada (block schedule) and dream (eps schedule) models
    cli = {}
    if not args.no_cli and args.device == "cpu":
        exe = build_diffusion_cli()
        for arch in cfg["cli_archs"] if exe is not None else ():
            block = cfg["llada_block"] if arch == "llada" else 0
            run_cli(exe, paths[arch], cfg["prompt"], min(gen, 64), block, args.threads)   # warm-up
            # it re-decodes everything at every step (minutes per run at the full suite's size)
            cli_runs = [run_cli(exe, paths[arch], cfg["prompt"], gen, block, args.threads)
                        for _ in range(min(runs, cfg["cli_runs"]))]
            cli[arch] = summarise([r["wall_ms"] for r in cli_runs], gen)
            cli[arch].update(steps=cli_runs[0]["steps"], block=block, n_runs=len(cli_runs))
            rss[f"llama-diffusion-cli ({arch})"] = max(r["peak_rss_mb"] for r in cli_runs)

    # ---- report
    rows = []
    for ci, block in enumerate(cfg["blocks"]):
        ours = [r["wall_ms"] for r in res[("llamadiff", ci)]]
        row = {"block": block, "llamadiff": summarise(ours, gen),
               "nocache": summarise([r["wall_ms"] for r in res[("nocache", ci)]], gen),
               "floor": summarise([r["wall_ms"] for r in res[("floor", ci)]], gen),
               "profile": {k: statistics.median(r["profile"][k] for r in res[("llamadiff", ci)])
                           for k in res[("llamadiff", ci)][0]["profile"]}}
        row["vs_nocache"] = statistics.median(n["wall_ms"] / o["wall_ms"] for n, o in zip(res[("nocache", ci)], res[("llamadiff", ci)]))
        row["vs_floor"] = statistics.median(o["wall_ms"] / f["wall_ms"] for o, f in zip(res[("llamadiff", ci)], res[("floor", ci)]))
        if torch_ok:
            tr = res[("torch", ci)]
            row["torch"] = summarise([r["wall_ms"] for r in tr], gen)
            row["vs_torch"] = statistics.median(t["wall_ms"] / o["wall_ms"] for t, o in zip(tr, res[("llamadiff", ci)]))
            row["same_tokens"] = sum(a == b for a, b in zip(tr[0]["tokens"], res[("llamadiff", ci)][0]["tokens"])) / gen
        rows.append(row)
    lengths = []
    for i, g in enumerate(cfg["gen_lengths"]):
        ours, nc = len_res[("llamadiff", i)], len_res[("nocache", i)]
        s = summarise([r["wall_ms"] for r in ours], g)
        s["nocache"] = summarise([r["wall_ms"] for r in nc], g)
        s["ratio"] = statistics.median(n["wall_ms"] / o["wall_ms"] for n, o in zip(nc, ours))
        lengths.append((g, s))

    lines = report(args, cfg, runs, rows, lengths, quant, cli, rss, torch_ok, time.time() - t_start)
    print("\n".join(lines))
    if args.out:
        plot_path = Path(args.plot) if args.plot else Path(args.out).with_name(f"benchmarks-{args.suite}.png")
        title = (f"llamadiff, suite {args.suite}: random qwen3 ({cfg['shape']['n_layer']} layers, "
                 f"{cfg['shape']['n_embd']} wide), {args.device}, {args.threads} threads")
        if plot(plot_path, rows, lengths, torch_ok, title):      # linked only once it exists
            log(f"plot: {plot_path}")
            link = os.path.relpath(plot_path.resolve(), Path(args.out).resolve().parent)
            lines += ["", f"![tok/s against block length and generated length, suite {args.suite}]({link})"]
        write_section(Path(args.out), args.suite, lines)
    return 0


def report(args, cfg, runs, rows, lengths, quant, cli, rss, torch_ok, elapsed) -> list:
    f = lambda s: f"{s['tok_s']:.1f} ({s['tok_s_range'][0]:.1f}-{s['tok_s_range'][1]:.1f})"  # noqa: E731
    shape = cfg["shape"]
    n_vocab = 276 + shape["n_vocab_pad"]
    lines = [
        f"### Harness, suite `{args.suite}` ({time.strftime('%Y-%m-%d')}, commit {git_commit()})",
        "",
        f"Command: `python benchmarks/run.py --suite {args.suite} --device {args.device}"
        f"{' --runs ' + str(args.runs) if args.runs else ''}{' --no-cli' if args.no_cli else ''}"
        f"{' --out ' + os.path.relpath(args.out, ROOT) if args.out else ''}`. "
        f"Machine: {machine()}, {args.threads} threads, device {args.device}. llama.cpp commit 0c1e570 "
        f"(library version {llamadiff.llama_cpp_version()}, from the sdist llama-cpp-python 0.3.36). Wall time of the whole run: {elapsed / 60:.1f} min.",
        "",
        f"Model: random-weight qwen3, {shape['n_layer']} layers, n_embd {shape['n_embd']}, vocab {n_vocab}, "
        f"F16 GGUF (the PyTorch peer loads the same weights in F32). Prompt {cfg['prompt']} tokens, "
        f"gen {cfg['gen']}, steps = block, low_confidence_static, greedy. Median tok/s (min-max) of {runs} "
        "interleaved runs after a warm-up; ratios are medians of per-pair ratios.",
        "",
        "| block | llamadiff | no cache | x vs no cache | decode floor | llamadiff / floor time |"
        + (" SDAR loop on transformers | x vs transformers | same tokens |" if torch_ok else ""),
        "|---|---|---|---|---|---|" + ("---|---|---|" if torch_ok else ""),
    ]
    for r in rows:
        line = (f"| {r['block']} | {f(r['llamadiff'])} | {f(r['nocache'])} | x{r['vs_nocache']:.2f} | {f(r['floor'])} "
                f"| {r['vs_floor']:.3f} |")
        if torch_ok:
            line += f" {f(r['torch'])} | x{r['vs_torch']:.2f} | {100 * r['same_tokens']:.0f}% |"
        lines.append(line)
    lines += ["", "Where llamadiff's time goes (`profile=True`, medians, ms):", "",
              "| block | prefill | decode | sampling | selection | Python/other |", "|---|---|---|---|---|---|"]
    for r in rows:
        p = r["profile"]
        lines.append(f"| {r['block']} | {p['prefill_ms']:.1f} | {p['decode_ms']:.1f} | {p['sampling_ms']:.1f} "
                     f"| {p['selection_ms']:.2f} | {p['python_ms']:.1f} |")
    lines += ["", "Generated length at block 4 (cache vs no cache, speed-up pair by pair): "
              + "; ".join(f"gen {g}: {s['tok_s']:.1f} vs {s['nocache']['tok_s']:.1f} tok/s, x{s['ratio']:.2f}"
                          for g, s in lengths) + "."]
    if quant:
        lines += ["", "Quantised models (block 4, cache on): "
                  + ", ".join(f"{q.upper()}: {s['tok_s']:.1f} tok/s, peak RSS {s['rss']:.0f} MiB" for q, s in quant.items())
                  + f"; F16: {rows[0]['llamadiff']['tok_s']:.1f} tok/s."]
    lines += ["", "Peak RSS per process (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items())
              + ("" if torch_ok else " (PyTorch peer not installed)") + "."]
    for arch, c in cli.items():
        schedule = f"block {c['block']}" if c["block"] else "eps schedule"
        lines += ["", f"Upstream `llama-diffusion-cli` on {arch} of the same shape ({schedule}, {c['steps']} steps, "
                  f"gen {cfg['gen']}, its own timer, {c['n_runs']} runs): {f(c)} tok/s."]
    if cli:
        lines += ["", "It re-decodes the whole sequence at every step; llamadiff's full-diffusion modes against "
                  "it: the full-diffusion section below (`benchmarks/full_diffusion.py`)."]
    return lines + [""]


def write_section(path: Path, suite: str, lines: list) -> None:
    """The harness's section of a suite (markers ``harness:SUITE``)."""
    bench.write_section(path, f"harness:{suite}", lines)


def plot(path: Path, rows, lengths, torch_ok, title: str = "") -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot")
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    blocks = [r["block"] for r in rows]
    series = [("llamadiff", "llamadiff (cache)"), ("nocache", "llamadiff, no cache"), ("floor", "decode floor")]
    if torch_ok:
        series.append(("torch", "SDAR loop, transformers"))
    for key, label in series:
        a.plot(blocks, [r[key]["tok_s"] for r in rows], marker="o", label=label)
    a.set_xlabel("block length (steps = block)")
    a.set_ylabel("generated tok/s")
    a.set_xscale("log", base=2)
    a.legend()
    a.set_title("speed against block length")
    b.set_title("speed against generated length (block 4)")
    if title:
        fig.suptitle(title)
    b.plot([g for g, _ in lengths], [s["tok_s"] for _, s in lengths], marker="o", label="llamadiff (cache), block 4")
    b.plot([g for g, _ in lengths], [s["nocache"]["tok_s"] for _, s in lengths], marker="o",
           label="llamadiff, no cache, block 4")
    b.set_ylim(bottom=0)
    a.set_ylim(bottom=0)
    b.set_xlabel("generated tokens")
    b.set_ylabel("generated tok/s")
    b.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True


if __name__ == "__main__":
    sys.exit(main())

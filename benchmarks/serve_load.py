"""Load test of ``llamadiff serve``: N concurrent clients against requests sent one after another.

    python benchmarks/serve_load.py [--clients 1,2,4,8,16,32] [--requests 64] [--threads 2]
                                    [--models shipped,random] [--plot docs/serve-load-cpu.png]

For each model a server process is started (``llamadiff serve``, ``--n-parallel`` = the most
clients), and the same R requests are sent by N clients (each sends R / N, one after another);
N = 1 is the sequential baseline. Reported per N: completed requests/s, committed tokens/s,
p50 / p95 latency, and how many answers were right. The shipped block model answers held-out
task prompts (``llamadiff.tasks``: ``sort 93715=`` -> ``13579``), checked against the task's
answer where the sequential run got it right too; a random-weight ~100M qwen3 model
(``llamadiff.bench.SHAPE``, F16) generates 32 tokens per request with no stop, checked against
the first sequential run's text (greedy: the batch must not change it). Each round sends the
set once per client count; the table holds medians over ``--rounds`` rounds and the answers of
all rounds. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, n_parallel: int, threads: int, extra=("--max-queue", "1024", "-c", "512"),
                 log=subprocess.DEVNULL) -> tuple:
    """(process, url) of a ``llamadiff serve`` answering /health; ``log``: where its output goes
    (a file, never a pipe nobody reads)."""
    port = free_port()
    cmd = [sys.executable, "-m", "llamadiff", "serve", "--port", str(port), "-t", str(threads),
           "--n-parallel", str(n_parallel), *extra]
    if model:
        cmd += ["-m", model]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the server did not start (exit status {proc.wait()})")


def run_clients(url: str, bodies: list, n_clients: int) -> tuple:
    """Send ``bodies`` from n_clients threads (client i sends bodies i, i + n, ...)."""
    answers = [None] * len(bodies)
    latency = [0.0] * len(bodies)
    tokens = [0] * len(bodies)

    host, port = url.split("//")[1].split(":")

    def client(c: int) -> None:
        # the standard library's client on one kept-alive connection: the load generator shares
        # this machine's cores with the server, so it should cost as little as it can
        conn = http.client.HTTPConnection(host, int(port), timeout=600)
        for i in range(c, len(bodies), n_clients):
            t0 = time.perf_counter()
            conn.request("POST", "/v1/completions", body=json.dumps(bodies[i]),
                         headers={"content-type": "application/json"})
            res = json.loads(conn.getresponse().read())
            latency[i] = time.perf_counter() - t0
            answers[i] = res["choices"][0]["text"]
            tokens[i] = res["usage"]["completion_tokens"]
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers, latency, tokens, time.perf_counter() - t0


def measure(name: str, model: str, bodies: list, truth, clients: list, threads: int, rounds: int) -> list:
    """Each round sends the request set once per client count (counts interleaved, so slow
    spells of a shared machine hit all of them); medians over the rounds."""
    proc, url = start_server(model, max(clients), threads)
    runs: dict = {n: [] for n in clients}
    reference = None
    try:
        run_clients(url, bodies[:4], 4)                       # warm-up
        for _ in range(rounds):
            for n in clients:
                answers, latency, tokens, wall = run_clients(url, bodies, n)
                if reference is None:
                    reference = answers                       # the first sequential answers
                right = sum(truth(i, a, reference[i]) for i, a in enumerate(answers))
                lat = sorted(latency)
                runs[n].append(dict(req_per_s=len(bodies) / wall, tok_per_s=sum(tokens) / wall,
                                    p50_ms=1e3 * statistics.median(lat),
                                    p95_ms=1e3 * lat[int(0.95 * (len(lat) - 1))], correct=right,
                                    same=sum(a == r for a, r in zip(answers, reference))))
                print(json.dumps({"model": name, "clients": n, **runs[n][-1]}), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    rows = []
    for n in clients:
        med = {k: statistics.median(r[k] for r in runs[n]) for k in ("req_per_s", "tok_per_s", "p50_ms", "p95_ms")}
        rows.append(dict(model=name, clients=n, requests=len(bodies) * rounds, **med,
                         correct=sum(r["correct"] for r in runs[n]),
                         same_as_sequential=sum(r["same"] for r in runs[n])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,2,4,8,16,32")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="shipped,random")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    rows = []
    if "shipped" in args.models:
        from llamadiff import tasks
        examples = tasks.examples(args.requests, split="test", seed=1)
        bodies = [{"prompt": p, "max_tokens": 16} for p, _ in examples]
        answers = [a for _, a in examples]
        rows += measure("shipped block model", "", bodies,
                        lambda i, got, seq: got == answers[i], clients, args.threads, args.rounds)
    if "random" in args.models:
        from llamadiff import testing
        from llamadiff.bench import SHAPE
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "qwen3-100m.gguf")
            testing.write_model(path, "qwen3", shape=SHAPE, dtype="f16")
            bodies = [{"prompt": [100 + i, 200 + i, 300 + i, 17], "max_tokens": 32, "ignore_eos": True}
                      for i in range(args.requests)]
            rows += measure("random qwen3 ~100M (F16)", path, bodies,
                            lambda i, got, seq: got == seq, clients, args.threads, args.rounds)
    print()
    print("| model | clients | requests/s | tokens/s | p50 ms | p95 ms | correct | vs sequential |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["clients"] == 1)
        print(f"| {r['model']} | {r['clients']} | {r['req_per_s']:.1f} | {r['tok_per_s']:.1f} | "
              f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['correct']}/{r['requests']} | "
              f"{r['req_per_s'] / base['req_per_s']:.2f}x |")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for name in dict.fromkeys(r["model"] for r in rows):
            mine = [r for r in rows if r["model"] == name]
            base = mine[0]["req_per_s"]
            axes[0].plot([r["clients"] for r in mine], [r["req_per_s"] / base for r in mine], "o-", label=name)
            axes[1].plot([r["clients"] for r in mine], [r["p95_ms"] for r in mine], "o-", label=name)
        axes[0].set(xscale="log", xlabel="concurrent clients", ylabel="requests/s vs one after another",
                    title="throughput")
        axes[1].set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="p95 latency, ms",
                    title="latency")
        for ax in axes:
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()

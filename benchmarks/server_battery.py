"""The server's memory under a battery of hostile and ordinary requests, round after round.

    python benchmarks/server_battery.py [--rounds 10] [--model block|full|PATH] [--json]

Starts ``llamadiff serve`` (one thread, 8 slots) and sends, per round, the same battery from
8 client threads: every request field at hostile values (extreme and denormal floats, wrong
types, long lists), malformed bodies and bodies of 5 and 50 MB, completions and chat completions that run,
streams cut after their first chunk, stop lists at the limit, requests past the caps. After
each round it reads the server's resident memory (``VmRSS``) and its high-water mark
(``VmHWM``) from /proc. A leak grows the RSS by about the same amount every round; an
allocator's high-water mark grows in the first rounds, then stays.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from serve_load import start_server

HOSTILE = (0, -1, 1, 2 ** 31, 2 ** 63, 10 ** 30, 0.5, -0.5, 1e-300, 5e-324, 1e-40, 1e30, True, "", "x",
           None, [], [1, 2], ["x"] * 100, {"a": 1})


def memory_kib(pid: int) -> tuple:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def battery() -> list:
    """(method, path, body or raw bytes, stream) of one round, in a fixed order."""
    from llamadiff.server import CompletionRequest
    out = []
    for field in sorted(f for f in CompletionRequest.model_fields if f not in ("prompt", "stream", "stream_options")):
        for value in HOSTILE:
            out.append(("/v1/completions", {"prompt": "47+38=", "max_tokens": 4, field: value}, False))
    for i in range(40):
        out.append(("/v1/completions", {"prompt": f"sort {93715 + i}=", "max_tokens": 16}, False))
        out.append(("/v1/chat/completions", {"messages": [{"role": "user", "content": f"rev py{i}="}],
                                             "max_tokens": 16}, False))
        out.append(("/v1/completions", {"prompt": "rev python=", "max_tokens": 400, "ignore_eos": True}, True))
    for raw in (b'{"prompt": ', b"\xff\xfe", b"[]", b'{"prompt": "x", "bogus": 1}', b"x" * 150_000):
        out.extend([("/v1/completions", raw, False)] * 5)
    for size in (5_000_000, 50_000_000):             # refused by size before they are read (413)
        out.extend([("/v1/completions", json.dumps({"prompt": "x" * size}).encode(), False)] * 2)
    out.extend([("/v1/completions", {"prompt": "x", "stop": ["s%d" % k for k in range(64)], "max_tokens": 64,
                                     "ignore_eos": True}, False)] * 10)
    out.extend([("/v1/completions", {"prompt": "x", "max_tokens": 5000}, False)] * 10)
    return out


def run_round(url: str, todo: list, threads: int = 8) -> dict:
    counts: dict = {}
    lock = threading.Lock()
    items = list(enumerate(todo))

    def worker():
        with httpx.Client(timeout=120) as c:
            while True:
                with lock:
                    if not items:
                        return
                    _, (path, body, stream) = items.pop()
                try:
                    if stream:
                        with c.stream("POST", url + path, json={**body, "stream": True}) as res:
                            for line in res.iter_lines():
                                if line.startswith("data: "):
                                    break            # cut after the first chunk
                        status = f"stream {res.status_code}, cut"
                    elif isinstance(body, bytes):
                        status = c.post(url + path, content=body, headers={"content-type": "application/json"}
                                        ).status_code
                    else:
                        status = c.post(url + path, json=body).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with lock:
                    counts[status] = counts.get(status, 0) + 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="at least 3 (growth is read from round 2 on)")
    ap.add_argument("--model", default="block")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.rounds < 3:
        ap.error("--rounds must be at least 3")
    from llamadiff import default_model
    model = default_model(args.model) if args.model in ("block", "full") else args.model
    log = tempfile.TemporaryFile(mode="w+")      # the server's log: a file, a pipe would fill up
    proc, url = start_server(model, 8, 1, extra=(), log=log)
    try:
        todo = battery()
        rows = [{"round": 0, "rss_kib": memory_kib(proc.pid)[0], "hwm_kib": memory_kib(proc.pid)[1]}]
        for r in range(1, args.rounds + 1):
            t0 = time.perf_counter()
            counts = run_round(url, todo)
            rss, hwm = memory_kib(proc.pid)
            rows.append({"round": r, "requests": len(todo), "seconds": round(time.perf_counter() - t0, 1),
                         "rss_kib": rss, "hwm_kib": hwm, "answers": counts})
            if not args.json:
                print(f"round {r}: {len(todo)} requests in {rows[-1]['seconds']} s, RSS {rss / 1024:.1f} MiB, "
                      f"high-water {hwm / 1024:.1f} MiB, answers {dict(sorted(counts.items(), key=str))}", flush=True)
        health = httpx.get(url + "/health", timeout=5).json()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.seek(0)
        err = log.read()
    if args.json:
        print(json.dumps({"rounds": rows, "health": health, "tracebacks": err.count("Traceback")}))
    else:
        print(f"RSS at start {rows[0]['rss_kib'] / 1024:.1f} MiB; growth per round after round 2: "
              f"{(rows[-1]['rss_kib'] - rows[2]['rss_kib']) / max(1, len(rows) - 3) / 1024:.2f} MiB; "
              f"tracebacks in the log: {err.count('Traceback')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

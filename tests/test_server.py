"""The OpenAI-compatible server (``llamadiff serve``): a real server process on 127.0.0.1, the
``openai`` client and plain HTTP; every wait is bounded."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

KEY = "test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "llamadiff", "serve", "--port", str(self.port), "-t", "1", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not start within 60 s")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()

    def post(self, path: str, body, headers=None, **kw):
        h = {"Authorization": f"Bearer {KEY}", "content-type": "application/json", **(headers or {})}
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return httpx.post(self.url + path, content=data, headers=h, timeout=60, **kw)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.log = self.proc.stdout.read()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server():
    srv = Server("--api-key", KEY, "--n-parallel", "8", "--max-queue", "64")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_completion_answers_and_counts(client):
    res = client.completions.create(model="any", prompt="sort 93715=", max_tokens=16)
    assert res.choices[0].text == "13579" and res.choices[0].finish_reason == "stop"
    assert res.usage.completion_tokens == 5 and res.usage.prompt_tokens > 0
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    # diffusion options under their own names
    res = client.completions.create(model="any", prompt="47+38=", max_tokens=16,
                                    extra_body={"block_length": 4, "steps": 4, "strategy": "sequential"})
    assert res.choices[0].text == "85"


def test_streaming_in_openai_chunks(client, server):
    stream = client.completions.create(model="any", prompt="sort 93715=", max_tokens=16, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "13579"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 5
    raw = server.post("/v1/completions", {"prompt": "47+38=", "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_chat_completion_applies_the_template(client):
    res = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert res.choices[0].message.role == "assistant" and res.object == "chat.completion"
    stream = client.chat.completions.create(model="any", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=8, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == res.choices[0].message.content


def test_models_and_health(client, server):
    ids = [m.id for m in client.models.list()]
    assert ids == ["block-tiny.gguf"]
    assert server.health()["status"] == "ok"


@pytest.mark.parametrize("body, status, fragment", [
    ('{"prompt": ', 400, "not valid JSON"),
    ({"prompt": "x", "bogus": 1}, 400, "unknown field 'bogus'"),
    ({"prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_new_tokens"),
    ({"prompt": "x", "strategy": "nope"}, 400, "strategy"),
    ({"prompt": "x", "n": 2}, 400, "n must be 1"),
    ({"prompt": "x " * 3000, "max_tokens": 16}, 400, "n_ctx"),
    ({"prompt": [1, 10 ** 9]}, 400, "out of range"),
    ({}, 400, "prompt"),
])
def test_bad_requests_get_openai_errors(server, body, status, fragment):
    res = server.post("/v1/completions", body)
    assert res.status_code == status
    error = res.json()["error"]
    assert fragment in error["message"] and error["type"] == "invalid_request_error"
    assert server.post("/v1/completions", {"prompt": "47+38="}).json()["choices"][0]["text"] == "85"


def test_api_key(server):
    res = httpx.post(server.url + "/v1/completions", json={"prompt": "x"}, timeout=10)
    assert res.status_code == 401 and res.json()["error"]["code"] == "invalid_api_key"
    res = server.post("/v1/completions", {"prompt": "x"}, headers={"Authorization": "Bearer wrong"})
    assert res.status_code == 401
    assert httpx.get(server.url + "/health", timeout=5).status_code == 200    # health needs no key


def test_concurrent_clients_get_solo_answers(client, server):
    prompts = ["47+38=", "sort 93715=", "rev python=", "copy k9x2=", "a1b7c4:b=", "12+9=", "sort 4817=", "rev abc="]
    solo = [client.completions.create(model="m", prompt=p, max_tokens=16).choices[0].text for p in prompts]
    out = [None] * len(prompts)

    def ask(i):
        out[i] = client.completions.create(model="m", prompt=prompts[i], max_tokens=16).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == solo and solo[:2] == ["85", "13579"]


def test_a_client_that_disconnects_frees_its_slot(server):
    body = json.dumps({"prompt": "rev python=", "max_tokens": 1500, "ignore_eos": True, "stream": True,
                       "block_length": 4})
    cancelled = server.health()["cancelled"]
    got = None
    with httpx.stream("POST", server.url + "/v1/completions", content=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"}) as res:
        assert res.status_code == 200
        for line in res.iter_lines():
            if line.startswith("data: "):
                got = json.loads(line[6:])
                break                       # one chunk, then hang up
    assert got["choices"][0]["finish_reason"] is None
    deadline = time.time() + 20
    while time.time() < deadline and server.health()["running"]:
        time.sleep(0.1)
    health = server.health()
    assert health["running"] == 0 and health["cancelled"] == cancelled + 1


def test_full_queue_answers_503_and_sigterm_stops_cleanly():
    srv = Server("--n-parallel", "1", "--max-queue", "1")
    try:
        long = {"prompt": "rev python=", "max_tokens": 1500, "ignore_eos": True}
        results = []

        def ask():
            try:
                results.append(httpx.post(srv.url + "/v1/completions", json=long, timeout=120).status_code)
            except httpx.HTTPError:         # still running when the server stopped
                results.append("closed")

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
            time.sleep(0.3)
        deadline = time.time() + 30
        while time.time() < deadline and results.count(503) < 2:
            time.sleep(0.1)
        assert results.count(503) >= 2                     # one running, one queued, the rest refused
        body = httpx.post(srv.url + "/v1/completions", json=long, timeout=10).json()
        assert body["error"]["code"] == "queue_full"
        t0 = time.time()
        # uvicorn ends the process with the signal after its shutdown, which closed the engine
        assert srv.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert time.time() - t0 < 30
        assert "llamadiff: stopped (" in srv.log
        for t in threads:
            t.join(30)
    finally:
        srv.stop(signal.SIGKILL)


def test_openai_fields_clients_send_by_default(server):
    body = {"prompt": ["sort 93715="], "max_completion_tokens": 16, "frequency_penalty": 0,
            "presence_penalty": 0.0, "logit_bias": {}, "logprobs": None, "echo": False, "stop": ["\n\n"]}
    res = server.post("/v1/completions", body)
    # stop sequences come on top of the model's end of generation: it still stops at EOS
    assert res.status_code == 200 and res.json()["choices"][0]["text"] == "13579"
    chat = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}]}], "max_tokens": 4})
    assert chat.status_code == 200
    for bad, fragment in (({"frequency_penalty": 1.0}, "frequency_penalty"), ({"logprobs": 3}, "logprobs"),
                          ({"echo": True}, "echo"), ({"stream_options": {"include_usage": True}}, "stream"),
                          ({"block_length": 4096}, "block_length"), ({"stop": "\ud800"}, "stop")):
        res = server.post("/v1/completions", {"prompt": "x", **bad})
        assert res.status_code == 400 and fragment in res.text, res.text
    assert server.health()["status"] == "ok"


@pytest.mark.parametrize("model", ["block", "full"])
def test_sigterm_with_requests_in_flight_answers_every_one(model, tmp_path):
    """SIGTERM while 16 requests run or wait (8 slots, 8 queued; half of them streams): within the
    drain time each one ends with the documented answer -- the JSON error (503, code
    "cancelled") or, for a stream, an SSE error event and then [DONE], which the openai client
    raises as an APIError -- never uvicorn's plain-text 500 or a cut connection, and the log
    holds no traceback."""
    from llamadiff import default_model
    srv = Server("-m", default_model(model), "--n-parallel", "8", "--max-queue", "64", "--drain-seconds", "1")
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
        # long enough to be running at the signal (a full-diffusion step decodes every slot whole)
        long = dict(model="m", prompt="rev python=", max_tokens=1800 if model == "block" else 200,
                    extra_body={"ignore_eos": True})
        outcomes, started = [], threading.Event()

        def ask(stream: bool):
            try:
                if stream:
                    for _ in client.completions.create(stream=True, **long):
                        started.set()
                    outcomes.append(("stream", "finished"))
                else:
                    client.completions.create(**long)
                    outcomes.append(("plain", "finished"))
            except openai.APIStatusError as exc:
                outcomes.append(("plain", exc.status_code, exc.body.get("code") if isinstance(exc.body, dict) else None))
            except openai.APIError as exc:       # an error event inside the stream
                outcomes.append(("stream", "error event", str(exc.message)))
            except Exception as exc:             # a connection error: the promise broken
                outcomes.append(("broken", type(exc).__name__, str(exc)))

        threads = [threading.Thread(target=ask, args=(i % 2 == 0,)) for i in range(16)]
        for t in threads:
            t.start()
        assert started.wait(60)
        deadline = time.time() + 30
        while time.time() < deadline and srv.health()["running"] + srv.health()["queued"] < 16:
            time.sleep(0.1)
        t0 = time.time()
        assert srv.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert time.time() - t0 < 20
        assert len(outcomes) == 16
        assert not [o for o in outcomes if o[0] == "broken"], outcomes
        plain = [o for o in outcomes if o[0] == "plain"]
        streams = [o for o in outcomes if o[0] == "stream"]
        assert len(plain) == len(streams) == 8
        assert all(o[1:] == (503, "cancelled") for o in plain), plain
        assert all(o[1] == "error event" and "shutting down" in o[2] for o in streams), streams
        assert "Traceback" not in srv.log and "CancelledError" not in srv.log, srv.log[-3000:]
    finally:
        srv.stop(signal.SIGKILL)


def test_the_api_description_is_behind_the_key(server):
    assert httpx.get(server.url + "/openapi.json", timeout=10).status_code == 401
    spec = httpx.get(server.url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert spec.status_code == 200 and "/v1/completions" in spec.json()["paths"]
    for page in ("/docs", "/redoc"):
        assert httpx.get(server.url + page, timeout=10).status_code == 404
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200     # open, documented

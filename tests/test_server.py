"""The OpenAI-compatible server (``llamadiff serve``): a real server process on 127.0.0.1, the
``openai`` client and plain HTTP; every wait is bounded."""

import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

pytestmark = pytest.mark.slow     # the quick subset leaves it out (README: -m "not slow")

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
        # its log goes to a file: a pipe nobody reads would fill up (the access log writes a line
        # a request) and block the server
        self._log_file = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, text=True)
        self.log = ""
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self._read_log()}")
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

    def _read_log(self) -> str:
        self._log_file.seek(0)
        return self._log_file.read()

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log = self._read_log()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server():
    srv = Server("--api-key", KEY, "--n-parallel", "8", "--max-queue", "64", "--max-tokens", "2048", "--model-name", "m")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_completion_answers_and_counts(client):
    res = client.completions.create(model="m", prompt="sort 93715=", max_tokens=16)
    assert res.choices[0].text == "13579" and res.choices[0].finish_reason == "stop"
    assert res.usage.completion_tokens == 5 and res.usage.prompt_tokens > 0
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    # diffusion options under their own names
    res = client.completions.create(model="m", prompt="47+38=", max_tokens=16,
                                    extra_body={"block_length": 4, "steps": 4, "strategy": "sequential"})
    assert res.choices[0].text == "85"


def test_decoding_modes_and_token_editing_over_http(client, server):
    """mode and the token-editing settings are request fields; speculation gives the
    autoregressive answer, and a setting the mode would ignore is a 400 naming it."""
    texts = {}
    for mode in ("autoregressive", "speculative"):
        res = client.completions.create(model="m", prompt="sort 93715=", max_tokens=12, extra_body={"mode": mode})
        texts[mode] = res.choices[0].text
    assert texts["speculative"] == texts["autoregressive"]
    res = client.completions.create(model="m", prompt="sort 93715=", max_tokens=16,
                                    extra_body={"strategy": "token_editing", "editing_threshold": 0})
    assert res.choices[0].text == "13579"
    bad = server.post("/v1/completions", {"prompt": "47+38=", "mode": "speculative", "temperature": 0.8})
    assert bad.status_code == 400 and "greedy" in bad.json()["error"]["message"]


def test_streaming_in_openai_chunks(client, server):
    stream = client.completions.create(model="m", prompt="sort 93715=", max_tokens=16, stream=True,
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
    res = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert res.choices[0].message.role == "assistant" and res.object == "chat.completion"
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=8, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == res.choices[0].message.content


def test_models_and_health(client, server):
    ids = [m.id for m in client.models.list()]
    assert ids == ["m"]                              # --model-name (default: the file name)
    assert server.health()["status"] == "ok" and server.health()["model"] == "m"


@pytest.mark.parametrize("body, status, fragment", [
    ('{"prompt": ', 400, "not valid JSON"),
    ({"prompt": "x", "bogus": 1}, 400, "unknown field 'bogus'"),
    ({"prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
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
    srv = Server("--n-parallel", "1", "--max-queue", "1", "--max-tokens", "2048")
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
        # uvicorn ends the process with the signal after its shutdown, which closed the batcher
        # (not killed: stop() gives it 30 s)
        assert srv.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
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
    srv = Server("-m", default_model(model), "--n-parallel", "8", "--max-queue", "64", "--drain-seconds", "1",
                 "--model-name", "m",
                 "--max-tokens", "2048")
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
        assert srv.stop(signal.SIGTERM) in (0, -signal.SIGTERM)     # not killed: it drained in time
        for t in threads:
            t.join(30)
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


# ---------------------------------------------------------------- hostile clients (docs/RELIABILITY.md)

@pytest.fixture(scope="module")
def strict():
    """A server with short limits: 2 s to send headers and body, a small request size."""
    srv = Server("--n-parallel", "4", "--read-timeout", "2", "--max-request-bytes", "200000", "--n-ctx", "512")
    yield srv
    srv.stop()


def _completion(srv, prompt="47+38=", timeout=60, **extra):
    """A short completion; ``timeout``: the seconds it may wait (past them httpx raises: a server
    blocked by another client fails the test that way)."""
    return httpx.post(srv.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 10, **extra},
                      timeout=timeout)


@pytest.mark.parametrize("field,value", [("top_p", 5e-324), ("threshold", 1e-300), ("temperature", 1e-40),
                                         ("eb_gamma", 1e-45), ("top_p", 1.0000000001)])
def test_float_values_are_checked_as_the_c_core_sees_them(strict, field, value):
    res = _completion(strict, **{field: value})
    if field == "top_p" and value > 1:            # 1.0 in single precision: a valid top_p
        assert res.status_code == 200
        return
    assert res.status_code == 400, res.text
    message = res.json()["error"]["message"]
    assert field in message and re.search("single.precision", message), message


def test_stop_lists_are_bounded(strict):
    res = httpx.post(strict.url + "/v1/completions", timeout=30,
                     json={"prompt": "x", "stop": ["zz%d" % i for i in range(5000)], "max_tokens": 4})
    assert res.status_code == 400 and "at most 64" in res.json()["error"]["message"]
    res = httpx.post(strict.url + "/v1/completions", timeout=30,
                     json={"prompt": "x", "stop": ["z" * 300], "max_tokens": 4})
    assert res.status_code == 400 and "at most 256" in res.json()["error"]["message"]
    # the largest list allowed, on a long generation: the search stays linear in the text
    res = httpx.post(strict.url + "/v1/completions", timeout=60, json={
        "prompt": "rev python=", "max_tokens": 400, "ignore_eos": True,
        "stop": ["never-%03d-" % i + "q" * 240 for i in range(64)]})
    assert res.status_code == 200 and res.json()["choices"][0]["finish_reason"] == "length"
    # the model's end of generation comes on top of the 64 the API allows
    res = httpx.post(strict.url + "/v1/completions", timeout=60, json={
        "prompt": "rev python=", "max_tokens": 8, "stop": ["never-%03d" % i for i in range(64)]})
    assert res.status_code == 200, res.text


def test_a_huge_request_is_refused_before_it_is_read_and_delays_nobody(strict):
    results = {}

    def huge():
        try:
            res = httpx.post(strict.url + "/v1/completions", content=json.dumps({"prompt": "x" * 50_000_000}),
                             headers={"content-type": "application/json"}, timeout=60)
            results["huge"] = (res.status_code, res.json()["error"]["code"])
        except httpx.HTTPError as exc:          # the server may close before all 50 MB are sent
            results["huge"] = ("closed", type(exc).__name__)

    t = threading.Thread(target=huge)
    t.start()
    # bounded, not fast: another client's short completion does not wait for the 50 MB body
    res = _completion(strict, timeout=20)
    t.join(60)
    assert not t.is_alive()                     # the 50 MB request ended too (its own timeout: 60 s)
    assert res.status_code == 200 and res.json()["choices"][0]["text"] == "85"
    assert results["huge"][0] in (413, "closed")
    if results["huge"][0] == 413:
        assert results["huge"][1] == "request_too_large"
    # chunked: no Content-Length, the size is counted as the body arrives
    def chunks():
        for _ in range(100):
            yield b"x" * 10000
    res = httpx.post(strict.url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"},
                     timeout=60)
    assert res.status_code == 413


def test_slow_and_short_bodies_end_with_408_while_others_are_served(strict):
    def raw(payload: bytes, wait: float = 10.0):
        s = socket.create_connection(("127.0.0.1", strict.port), timeout=wait)
        if payload:
            s.sendall(payload)
        data, closed = b"", False
        try:
            while True:                     # the answer, then the server's close (EOF)
                chunk = s.recv(65536)
                if not chunk:
                    closed = True
                    break
                data += chunk
        except socket.timeout:
            pass
        s.close()
        return data.split(b"\r\n")[0], closed

    # a Content-Length larger than the body, headers that never end, a connection that says nothing
    assert raw(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 1000\r\n\r\n{\"prompt\":") == (b"HTTP/1.1 408 Request Timeout", True)
    assert raw(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n") == (b"HTTP/1.1 408 Request Timeout", True)
    assert raw(b"") == (b"HTTP/1.1 408 Request Timeout", True)
    # 200 slow connections at once: valid requests are still answered, and all 200 end
    slow = []
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", strict.port), timeout=30)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{" if i % 2
                  else b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        slow.append(s)
    for _ in range(3):
        res = _completion(strict, timeout=20)
        assert res.status_code == 200
    ended = 0
    for s in slow:
        try:
            ended += s.recv(65536).startswith(b"HTTP/1.1 408")
        finally:
            s.close()
    assert ended == 200


def test_per_request_caps_are_stated_and_enforced(strict):
    limits = httpx.get(strict.url + "/v1/models", timeout=10).json()["data"][0]["limits"]
    assert limits["max_tokens"] == 1024 and limits["max_steps"] == 1024 and limits["max_request_bytes"] == 200000
    for body, param in (({"max_tokens": 2030}, "max_tokens"), ({"max_tokens": 8, "steps": 5000}, "steps"),
                        ({"max_tokens": 8, "block_length": 4096}, "block_length")):
        res = httpx.post(strict.url + "/v1/completions", json={"prompt": "x", **body}, timeout=10)
        assert res.status_code == 400, res.text
        err = res.json()["error"]
        assert err["param"] == param and "limit" in err["message"]


def test_the_key_is_compared_exactly():
    srv = Server("--api-key", KEY, "--n-parallel", "1")
    try:
        def status(auth):
            return httpx.get(srv.url + "/v1/models", headers={"Authorization": auth} if auth else {},
                             timeout=10).status_code
        assert status(f"Bearer {KEY}") == 200
        assert status(f"bearer {KEY}") == 200                  # the scheme is case-insensitive
        for wrong in (f"Bearer {KEY[:-1]}", f"Bearer {KEY}x", f"Bearer  {KEY}", f"Basic {KEY}", KEY,
                      f"Bearer {KEY.upper()}", "Bearer", ""):
            assert status(wrong) == 401, wrong
    finally:
        srv.stop()
    # a key HTTP could not carry exactly (spaces around it are not part of a header's value, and
    # servers decode a header as latin-1: a non-ASCII key could never match)
    for bad in (KEY + " ", " " + KEY, "a key", "p\u00e4sswort"):
        proc = subprocess.run([sys.executable, "-m", "llamadiff", "serve", "--api-key", bad], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 1 and "API key must be printable ASCII without spaces" in proc.stderr


HOSTILE_FIELD_VALUES = (0, -1, 1, 2 ** 31, 2 ** 63, 10 ** 30, 0.5, -0.5, 1e-300, 5e-324, 1e-40, 1e30, True,
                        "", "x", None, [], [1, 2], ["x"] * 100, {"a": 1}, "\u0000")


def test_every_request_field_with_hostile_values_gets_200_or_4xx(strict):
    """The settings fuzz of the server: every request field at extreme and denormal floats,
    wrong types and large lists ends in 200 or a 4xx with an OpenAI error body -- never a 500,
    never a hang."""
    from llamadiff.server import CompletionRequest
    fields = sorted(f for f in CompletionRequest.model_fields if f not in ("prompt", "stream", "stream_options"))
    statuses = collections.Counter()
    with httpx.Client(timeout=60) as c:
        for field in fields:
            for value in HOSTILE_FIELD_VALUES:
                body = {"prompt": "47+38=", "max_tokens": 4, field: value}
                if field in ("max_tokens", "max_completion_tokens"):
                    body = {"prompt": "47+38=", field: value}
                res = c.post(strict.url + "/v1/completions", json=body)
                statuses[res.status_code] += 1
                assert res.status_code == 200 or 400 <= res.status_code < 500, (field, value, res.text)
                if res.status_code != 200:
                    assert "error" in res.json(), (field, value, res.text)
    assert statuses[200] > 20 and sum(v for k, v in statuses.items() if k != 200) > 200
    assert strict.health()["status"] == "ok"


def test_every_error_has_the_openai_shape(server):
    """404s, a body sent without a content type, the API's own names in messages, suggestions
    for unknown fields, and an unknown model: each an OpenAI error body."""
    h = {"Authorization": f"Bearer {KEY}"}
    res = httpx.get(server.url + "/v1/nope", headers=h, timeout=10)
    assert res.status_code == 404 and res.json()["error"]["code"] == "not_found" and "detail" not in res.json()
    res = httpx.get(server.url + "/v1/completions", headers=h, timeout=10)
    assert res.status_code == 405 and res.json()["error"]["code"] == "method_not_allowed"
    # no Content-Type: read as JSON all the same (curl -d does not set one)
    res = httpx.post(server.url + "/v1/completions", content=b'{"prompt": "47+38=", "max_tokens": 4}',
                     headers=h, timeout=60)
    assert res.status_code == 200 and res.json()["choices"][0]["text"] == "85"
    res = httpx.post(server.url + "/v1/completions", content=b"not json", headers=h, timeout=10)
    assert res.status_code == 400 and "not valid JSON" in res.json()["error"]["message"]
    res = server.post("/v1/completions", {"prompt": "x", "max_tokens": -1})
    message = res.json()["error"]["message"]
    assert res.status_code == 400 and "max_tokens" in message and "max_new_tokens" not in message
    res = server.post("/v1/completions", {"prompt": "x", "temprature": 0.5})
    assert res.status_code == 400 and "did you mean 'temperature'?" in res.json()["error"]["message"]
    res = server.post("/v1/completions", {"prompt": "x", "model": "nope"})
    err = res.json()["error"]
    assert res.status_code == 404 and err["code"] == "model_not_found" and "'m'" in err["message"]
    assert server.post("/v1/completions", {"prompt": "47+38=", "model": "m"}).status_code == 200


def test_serve_says_which_model_it_serves():
    srv = Server("--n-parallel", "1")
    srv.stop()
    assert "llamadiff serve: " in srv.log and "block-tiny.gguf (qwen3, block diffusion" in srv.log


def test_memory_levels_off_under_a_hostile_battery():
    """benchmarks/server_battery.py, three rounds of its 769 requests (hostile fields, malformed
    and 5 / 50 MB bodies, completions, cut streams, caps): no 500, and the resident memory stops
    growing after the first round (a leak would add about the same every round)."""
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "server_battery.py")
    proc = subprocess.run([sys.executable, script, "--rounds", "3", "--json"], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    rounds = report["rounds"]
    assert all("500" not in r["answers"] for r in rounds[1:]), rounds       # JSON: the statuses are keys
    rss = [r["rss_kib"] for r in rounds]
    assert rss[3] - rss[2] < 8 * 1024, rss          # KiB: under 8 MiB from round 2 to round 3
    assert report["health"]["status"] == "ok" and report["tracebacks"] == 0


def test_a_canvas_model_over_http(tmp_path):
    """DiffusionGemma behind the server: completions and streams with its own options, a clear
    400 for an option it would ignore."""
    from llamadiff import testing
    path = testing.write_diffusion_gemma(tmp_path / "dg.gguf", seed=1)
    srv = Server("-m", str(path), "--api-key", KEY, "--n-parallel", "2", "--model-name", "dg")
    try:
        body = {"model": "dg", "prompt": "hello", "max_tokens": 24, "steps": 4, "t_min": 0.3, "seed": 1}
        res = srv.post("/v1/completions", body)
        assert res.status_code == 200, res.text
        assert res.json()["usage"]["completion_tokens"] > 0
        chunks = srv.post("/v1/completions", {**body, "stream": True})
        assert chunks.status_code == 200 and "data: [DONE]" in chunks.text
        res = srv.post("/v1/completions", {**body, "temperature": 0.7})
        assert res.status_code == 400 and "t_min" in res.text
    finally:
        srv.stop()

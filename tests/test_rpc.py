"""Models split across machines: the ggml RPC backend with a local rpc-server."""

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from llamadiff import Generator, Model, rpc

try:
    rpc.server_path()
    HAVE_SERVER = True
except FileNotFoundError:
    HAVE_SERVER = False

pytestmark = pytest.mark.slow     # the quick subset leaves it out (README: -m "not slow")

needs_server = pytest.mark.skipif(not HAVE_SERVER, reason="built without the RPC backend (LLAMADIFF_RPC=0)")


@needs_server
@pytest.mark.parametrize("arch", ["qwen3", "llada"])
def test_generation_through_rpc_server_matches_local(arch, qwen3_path, llada_path):
    path = str({"qwen3": qwen3_path, "llada": llada_path}[arch])
    opts = dict(max_new_tokens=16, stop=[])
    if arch == "llada":
        opts.update(block_length=8)
    kw = dict(n_ctx=256, n_threads=1, type_k="f32", type_v="f32", flash_attn=False)
    with Generator(path, **kw) as local:
        expected = local.generate("split across machines", **opts).tokens
    with rpc.start_server(threads=1) as server:
        with Generator(path, rpc_servers=[server.endpoint], **kw) as remote:
            assert remote.model.uses_rpc
            assert remote.generate("split across machines", **opts).tokens == expected


def _closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_a_clear_error(qwen3_path):
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot reach RPC server"):
        Generator(str(qwen3_path), rpc_servers=[f"127.0.0.1:{_closed_port()}"])
    assert time.monotonic() - t0 < 10


def test_silent_server_times_out(qwen3_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    endpoint = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        t0 = time.monotonic()
        with pytest.raises(ConnectionError, match="did not answer within 0.5 s"):
            rpc.check_server(endpoint, timeout=0.5)
        assert time.monotonic() - t0 < 3
    finally:
        listener.close()


@pytest.mark.parametrize("endpoint", ["localhost", "host:port", ":50052", "h:70000", 5])
def test_malformed_endpoints(endpoint, qwen3_path):
    with pytest.raises(ValueError):
        Generator(str(qwen3_path), rpc_servers=[endpoint])


def test_rpc_servers_need_a_path(qwen3_model):
    with pytest.raises(ValueError, match="pass a path"):
        Generator(qwen3_model, rpc_servers=["127.0.0.1:50052"])


@needs_server
def test_server_lost_mid_session_raises_instead_of_aborting(qwen3_path):
    """llama.cpp's RPC client aborts the process on a lost server; patch 0005 turns that into
    a flag that llamadiff reports. Run in a child: the flag is process-wide."""
    script = textwrap.dedent(f"""
        from llamadiff import Generator, rpc
        server = rpc.start_server(threads=1)
        gen = Generator({str(qwen3_path)!r}, n_ctx=256, n_threads=1, rpc_servers=[server.endpoint])
        print("first", len(gen.generate("hi", max_new_tokens=8, stop=[]).tokens))
        server.close()
        try:
            gen.generate("hi", max_new_tokens=8, stop=[])
            print("no error")
        except ConnectionError as exc:
            print("error:", exc)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "first 8" in proc.stdout
    assert "error: an RPC server holding this model's layers stopped answering" in proc.stdout


# --------------------------------------------------------------------------- stalled servers
# vendor/patches/0006: every wait of the RPC client is bounded by rpc_timeout, and Ctrl-C cuts
# it short. A stalled server fails the connection, and the failure flag is process-wide
# (vendor/patches/0005), so each scenario runs in a child process; the parent bounds the
# child's run time, so a regression (a hang) fails the test instead of hanging the run.

HELLO_RSP_SIZE = 4 + rpc.RPC_CONN_CAPS_SIZE


class SilentAfterHello:
    """A fake rpc-server on 127.0.0.1: answers each connection's HELLO exactly like a real
    server (protocol 7.0.0, no transport capabilities), then never answers anything."""

    def __init__(self, max_connections=8):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.settimeout(0.2)
        self.endpoint = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.hellos = 0
        self._conns = []
        self._stop = threading.Event()
        self._max = max_connections
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and len(self._conns) < self._max and time.monotonic() < deadline:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._conns.append(conn)
            try:
                conn.settimeout(5)
                cmd, size = struct.unpack("<BQ", rpc._recv_exact(conn, 9))
                assert cmd == rpc.RPC_CMD_HELLO and size == rpc.RPC_CONN_CAPS_SIZE
                rpc._recv_exact(conn, size)
                self.hellos += 1        # counted before the answer: the client may look right after it
                conn.sendall(struct.pack("<Q", HELLO_RSP_SIZE) + bytes([rpc.RPC_PROTO_MAJOR, 0, 0, 0])
                             + bytes(rpc.RPC_CONN_CAPS_SIZE))
            except (OSError, AssertionError, struct.error):
                pass
            # then silence: the connection stays open, nothing more is read or sent

    def close(self):
        self._stop.set()
        self.listener.close()
        self._thread.join(timeout=5)
        for conn in self._conns:
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _run_child(script, timeout=90):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=timeout)


def test_fake_server_answers_hello_like_a_real_one():
    with SilentAfterHello() as fake:
        assert rpc.check_server(fake.endpoint, timeout=2.0) == (rpc.RPC_PROTO_MAJOR, 0, 0)
        assert fake.hellos == 1


@needs_server
def test_server_silent_after_handshake_times_out(qwen3_path):
    """Issue 7: the server completes the handshake, then never answers: Generator(...) used
    to hang; now the connection times out after rpc_timeout."""
    with SilentAfterHello() as fake:
        proc = _run_child(f"""
            import time
            from llamadiff import Generator
            t0 = time.monotonic()
            try:
                Generator({str(qwen3_path)!r}, n_ctx=256, n_threads=1, rpc_servers=[{fake.endpoint!r}],
                          rpc_timeout=1.0)
                print("no error")
            except (ConnectionError, TimeoutError) as exc:
                print("error:", type(exc).__name__, exc)
            print("elapsed %.2f" % (time.monotonic() - t0))
        """)
        assert fake.hellos >= 2, proc.stdout + proc.stderr[-2000:]   # llamadiff.rpc's check, then llama.cpp's
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "error: ConnectionError RPC server 127.0.0.1:" in proc.stdout, proc.stdout
    assert "rpc_timeout=1 s" in proc.stdout
    elapsed = float(proc.stdout.split("elapsed ")[1])
    assert elapsed < 15, proc.stdout        # a hang check, not a timing test


def _start_server_for_child():
    server = rpc.start_server(threads=1)
    return server, server.proc.pid


def _resume_and_close(server, pid):
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    server.close()


@needs_server
def test_server_stopped_mid_generation_raises(qwen3_path):
    """Issue 8: an rpc-server stopped (SIGSTOP) after a generation worked: the next generation
    raises ConnectionError within about rpc_timeout, and later calls fail at once."""
    server, pid = _start_server_for_child()
    try:
        proc = _run_child(f"""
            import os, signal, time
            from llamadiff import Generator
            gen = Generator({str(qwen3_path)!r}, n_ctx=256, n_threads=1,
                            rpc_servers=[{server.endpoint!r}], rpc_timeout=2.0)
            print("first", len(gen.generate("hi", max_new_tokens=8, stop=[]).tokens), flush=True)
            os.kill({pid}, signal.SIGSTOP)
            for attempt in ("second", "third"):
                t0 = time.monotonic()
                try:
                    gen.generate("hi", max_new_tokens=8, stop=[])
                    print(attempt, "no error")
                except ConnectionError as exc:
                    print(attempt, "error:", exc)
                print(attempt, "elapsed %.2f" % (time.monotonic() - t0), flush=True)
            gen.close()
            print("closed")
        """)
    finally:
        _resume_and_close(server, pid)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    out = proc.stdout
    assert "first 8" in out
    assert "second error: an RPC server holding this model's layers stopped answering" in out, out
    assert "rpc_timeout=2 s" in out
    assert "third error: an RPC server holding this model's layers stopped answering" in out, out
    assert float(out.split("second elapsed ")[1].split()[0]) < 15, out     # hang checks
    assert float(out.split("third elapsed ")[1].split()[0]) < 5, out
    assert "closed" in out


def _read_until(proc, marker, timeout):
    """Child's stdout up to a line containing ``marker`` (bounded in time)."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in data and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


@needs_server
@pytest.mark.parametrize("api", ["generate", "decode"])
def test_ctrl_c_interrupts_a_stalled_server(api, qwen3_path):
    """Ctrl-C while a call waits on a stopped server (rpc_timeout 60 s) ends the wait within a
    few seconds: Generator.generate returns what it has ("interrupted"), a bare decode raises
    KeyboardInterrupt. The connection is then failed: the next call raises ConnectionError."""
    server, pid = _start_server_for_child()
    call = {
        "generate": 'print("result", gen.generate("hi", max_new_tokens=8, stop=[]).stop_reason, flush=True)',
        "decode": 'ctx.decode(model.tokenize("hi"))',
    }[api]
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        # Ctrl-C as in a terminal, whatever this run inherited (a shell's background job
        # ignores SIGINT, and the child would too)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from llamadiff import Context, Generator, Model
        model = Model({str(qwen3_path)!r}, rpc_servers=[{server.endpoint!r}], rpc_timeout=60.0)
        gen = Generator(model, n_ctx=256, n_threads=1)
        gen.generate("hi", max_new_tokens=8, stop=[])
        ctx = Context(model, n_ctx=64, n_threads=1)
        os.kill({pid}, signal.SIGSTOP)
        print("waiting", flush=True)
        t0 = time.monotonic()
        try:
            {call}
        finally:
            print("elapsed %.2f" % (time.monotonic() - t0), flush=True)
        try:
            gen.generate("hi", max_new_tokens=8, stop=[])
            print("no error")
        except ConnectionError as exc:
            print("then error:", exc, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out = _read_until(proc, "waiting", timeout=90)
        assert "waiting" in out, out
        time.sleep(1.5)     # the child is inside the stalled call by now
        t_sigint = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=30)
        exited_after = time.monotonic() - t_sigint
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        _resume_and_close(server, pid)
    out += rest.decode(errors="replace")
    err = err.decode(errors="replace")
    assert exited_after < 15, (out, err[-2000:])          # a hang check: rpc_timeout is 60 s
    assert "elapsed " in out, (out, err[-2000:])
    assert float(out.split("elapsed ")[1].split()[0]) < 15, out
    if api == "generate":
        assert proc.returncode == 0, err[-2000:]
        assert "result interrupted" in out, out
        assert "then error: an RPC server holding this model's layers stopped answering" in out, out
    else:
        assert proc.returncode != 0
        assert "KeyboardInterrupt" in err, err[-2000:]


@pytest.mark.parametrize("value,error", [(0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                                         (float("inf"), ValueError), ("5", TypeError), (None, TypeError),
                                         (True, TypeError)])
def test_rpc_timeout_is_checked(value, error, qwen3_path):
    with pytest.raises(error, match="rpc_timeout"):
        Generator(str(qwen3_path), rpc_servers=["127.0.0.1:1"], rpc_timeout=value)
    with pytest.raises(error, match="rpc_timeout"):
        Model(str(qwen3_path), rpc_timeout=value)

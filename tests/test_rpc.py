"""Models split across machines: the ggml RPC backend with a local rpc-server."""

import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from llamadiff import Generator, rpc

try:
    rpc.server_path()
    HAVE_SERVER = True
except FileNotFoundError:
    HAVE_SERVER = False

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

"""Models split across machines: llama.cpp's ggml RPC backend.

Start ``rpc-server`` (built with llamadiff from the vendored llama.cpp, see ``server_path``)
on each machine that should hold layers, then::

    gen = Generator("model.gguf", rpc_servers=["10.0.0.2:50052", "10.0.0.3:50052"])

The model's layers are spread over the servers' devices (``n_gpu_layers`` defaults to all);
this process keeps the sampling and the loop. ``start_server`` runs one locally (tests,
trying it out).

Failures are exceptions, never a hang or an abort of the process:

- Servers are checked with the RPC handshake (``check_server``) before llama.cpp sees them:
  an unreachable, silent, non-RPC or incompatible server raises ConnectionError.
- Every wait on a server is bounded by ``rpc_timeout`` (``Generator``/``Model`` option,
  seconds, default ``DEFAULT_TIMEOUT`` = 10): the handshake check, connecting, and each send
  and receive of every request. The bound is on *progress* -- a large weight upload that keeps
  moving bytes never times out -- but the wait for a graph computation's result counts as one
  wait, so ``rpc_timeout`` must exceed the slowest decode a server does (raise it for large
  models on CPU servers). A server that stalls (hung, stopped, its machine gone) or closes the
  connection fails it, and the call raises ConnectionError within about ``rpc_timeout``
  (vendor/patches/0005, 0006).
- Ctrl-C during a call that waits on a server interrupts the wait within ~50 ms and raises
  KeyboardInterrupt; the request was cut off, so the connection is failed too.
- A failed connection is final for the whole process (the client's failure flag is
  process-wide): every later RPC decode or load raises ConnectionError. Start a new process
  to use RPC servers again.

The RPC protocol is unauthenticated and unencrypted: bind servers to trusted networks only.
"""

from __future__ import annotations

import math
import numbers
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional

__all__ = ["server_path", "check_server", "check_servers", "start_server", "RpcServer",
           "DEFAULT_TIMEOUT"]

RPC_CMD_HELLO = 14
RPC_PROTO_MAJOR = 7
RPC_CONN_CAPS_SIZE = 24
# seconds any wait on an RPC server may last without progress (rpc_timeout=)
DEFAULT_TIMEOUT = 10.0


def validate_timeout(value, name: str = "timeout") -> float:
    """``value`` as a float number of seconds; TypeError (not a number) or ValueError (not
    finite and > 0) naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return value


def server_path() -> Path:
    """The ``rpc-server`` executable built with this installation."""
    path = Path(__file__).resolve().parent / "llamadiff-rpc-server"
    if not path.is_file():
        raise FileNotFoundError("this installation has no rpc-server: reinstall llamadiff with "
                                "LLAMADIFF_RPC=1 (the default)")
    return path


def _split(endpoint: str) -> tuple[str, int]:
    if not isinstance(endpoint, str) or ":" not in endpoint:
        raise ValueError(f"an RPC server is 'host:port', got {endpoint!r}")
    host, _, port = endpoint.rpartition(":")
    try:
        port_n = int(port)
    except ValueError:
        raise ValueError(f"bad port in RPC server {endpoint!r}") from None
    if not host or not 0 < port_n < 65536:
        raise ValueError(f"bad RPC server {endpoint!r}")
    return host, port_n


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


def check_server(endpoint: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, int, int]:
    """Connect and run the RPC handshake within ``timeout`` seconds; return the server's
    protocol version. Raises ConnectionError (unreachable, silent, not an rpc-server, or an
    incompatible version), ValueError (malformed endpoint) or TypeError/ValueError (bad
    timeout)."""
    timeout = validate_timeout(timeout)
    host, port = _split(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            request = bytes(RPC_CONN_CAPS_SIZE)
            sock.sendall(struct.pack("<BQ", RPC_CMD_HELLO, len(request)) + request)
            (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
            if size != 4 + RPC_CONN_CAPS_SIZE:
                raise ConnectionError(f"RPC server {endpoint} answered the handshake with {size} bytes: "
                                      "not a compatible rpc-server")
            major, minor, patch = _recv_exact(sock, size)[:3]
    except socket.timeout:
        raise ConnectionError(f"RPC server {endpoint} did not answer within {timeout:g} s") from None
    except OSError as exc:
        if isinstance(exc, ConnectionError) and str(exc).startswith("RPC server"):
            raise
        raise ConnectionError(f"cannot reach RPC server {endpoint}: {exc}") from None
    if major != RPC_PROTO_MAJOR:
        raise ConnectionError(f"RPC server {endpoint} speaks protocol {major}.{minor}.{patch}; "
                              f"this llamadiff needs {RPC_PROTO_MAJOR}.x (run the rpc-server built "
                              "from the same llama.cpp)")
    return major, minor, patch


def check_servers(endpoints: Iterable[str], timeout: float = DEFAULT_TIMEOUT) -> list:
    """``check_server`` on each endpoint; returns them as a list."""
    endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    if not endpoints:
        raise ValueError("rpc_servers is empty")
    for endpoint in endpoints:
        check_server(endpoint, timeout)
    return endpoints


class RpcServer:
    """A local rpc-server process (``start_server``); a context manager."""

    def __init__(self, proc: subprocess.Popen, endpoint: str):
        self.proc = proc
        self.endpoint = endpoint

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_server(host: str = "127.0.0.1", port: Optional[int] = None, *, threads: Optional[int] = None,
                 timeout: float = 30.0) -> RpcServer:
    """Start the bundled rpc-server (CPU device) and wait until it answers the handshake."""
    port = port or _free_port(host)
    cmd = [str(server_path()), "-H", host, "-p", str(port)]
    if threads:
        cmd += ["-t", str(threads)]
    log = tempfile.TemporaryFile()           # a file, not a pipe: the server's log never blocks it
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"{host}:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            log.seek(0)
            err = log.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"rpc-server exited with status {proc.returncode}: {err[-1] if err else ''}")
        try:
            check_server(endpoint, timeout=1.0)
            return RpcServer(proc, endpoint)
        except ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)

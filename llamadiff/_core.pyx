# cython: language_level=3
# distutils: language = c++
"""Ownership of llama.cpp's native objects: models, contexts, batches, logits views.

``Model`` owns a ``llama_model*``, ``Context`` a ``llama_context*`` plus one reusable
``llama_batch``. Everything that could make llama.cpp abort the process (GGML_ASSERT on
batch sizes, out-of-range token ids) is checked here first and raised as a Python
exception. llama.cpp's log goes to the ``llamadiff.llama`` logger.
"""

import atexit
import collections
import logging
import os
import signal
import struct

from cpython.buffer cimport PyBUF_WRITABLE
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetInterrupt
from libc.stdint cimport int8_t, int32_t, int64_t, uint32_t
from libc.stdlib cimport malloc, free, strtol
from libc.string cimport memcpy, strncmp
from libcpp cimport bool as cbool

from libcpp.vector cimport vector
cimport llamadiff.llama as C
from llamadiff._interrupt cimport (ld_install_sigint_hook, ld_interrupt_pending, ld_interrupt_clear,
                                   ld_interrupt_set_extra, ld_interrupt_fn, ld_rpc_set_timeout_fn)
from llamadiff.llama cimport (llama_model, llama_vocab, llama_context, llama_batch,
                              llama_token, llama_pos, llama_seq_id, ggml_log_level)

from llamadiff.errors import (ModelLoadError, ContextError, DecodeError, DecodeAborted,
                              UnsupportedModelError, ChatTemplateError)
from llamadiff import chat as _chat
from llamadiff.rpc import DEFAULT_TIMEOUT as _RPC_DEFAULT_TIMEOUT, validate_timeout as _rpc_validate_timeout

import numpy as np

# --------------------------------------------------------------------------- logging

logger = logging.getLogger("llamadiff.llama")
# Quiet by default: with a NullHandler Python's last-resort handler does not print
# llama.cpp's warnings; configure logging (or add a handler) to see them.
logger.addHandler(logging.NullHandler())

_PY_LEVEL = {
    C.GGML_LOG_LEVEL_DEBUG: logging.DEBUG,
    C.GGML_LOG_LEVEL_INFO: logging.INFO,
    C.GGML_LOG_LEVEL_WARN: logging.WARNING,
    C.GGML_LOG_LEVEL_ERROR: logging.ERROR,
}

# Lines below this ggml level are dropped without taking the GIL (set_log_level).
cdef int _min_forward_level = C.GGML_LOG_LEVEL_INFO
cdef int _last_level = C.GGML_LOG_LEVEL_INFO
cdef bint _python_alive = True

_partial_line = []
# Recent warnings and errors, quoted in exceptions when a llama.cpp call fails.
_recent_problems = collections.deque(maxlen=16)


cdef void _log_callback(ggml_log_level level, const char * text, void * user_data) noexcept nogil:
    global _last_level
    cdef int lvl = level
    if lvl == C.GGML_LOG_LEVEL_CONT:
        lvl = _last_level          # a continuation of the previous message
    else:
        _last_level = lvl
    if (lvl < _min_forward_level and lvl < C.GGML_LOG_LEVEL_WARN) or not _python_alive:
        return
    with gil:
        try:
            _dispatch_log(lvl, text)
        except KeyboardInterrupt:
            PyErr_SetInterrupt()    # Ctrl-C handled while logging: keep it for the interrupted call
        except BaseException:
            pass


cdef void _silent_callback(ggml_log_level level, const char * text, void * user_data) noexcept nogil:
    pass


cdef _dispatch_log(int lvl, const char * text):
    piece = text.decode("utf-8", "replace")
    _partial_line.append(piece)
    if not piece.endswith("\n"):
        return
    message = "".join(_partial_line).rstrip("\n")
    _partial_line.clear()
    if lvl >= C.GGML_LOG_LEVEL_WARN:
        _recent_problems.append(message.strip())
    py_level = _PY_LEVEL.get(lvl, logging.DEBUG)
    if logger.isEnabledFor(py_level):
        logger.log(py_level, message)


def set_log_level(level):
    """Forward llama.cpp messages at or above ``level`` (a ``logging`` level) to Python.

    Also sets the level of the ``llamadiff.llama`` logger. Warnings and errors are always
    collected (they are quoted in exceptions); DEBUG lines are dropped unless asked for
    here, since forwarding them costs a GIL round trip each.
    """
    global _min_forward_level
    level = logging._checkLevel(level)
    logger.setLevel(level)
    if level <= logging.DEBUG:
        _min_forward_level = C.GGML_LOG_LEVEL_DEBUG
    elif level <= logging.INFO:
        _min_forward_level = C.GGML_LOG_LEVEL_INFO
    elif level <= logging.WARNING:
        _min_forward_level = C.GGML_LOG_LEVEL_WARN
    else:
        _min_forward_level = C.GGML_LOG_LEVEL_ERROR


def _take_problems():
    """Return and forget the llama.cpp warnings/errors logged since the last call."""
    lines = [line for line in _recent_problems if line]
    _recent_problems.clear()
    return lines


def _at_exit():
    # After finalization begins, a callback must not touch Python objects.
    global _python_alive
    _python_alive = False
    C.llama_log_set(_silent_callback, NULL)


C.llama_log_set(_log_callback, NULL)
# One backend initialisation per process (module import happens once).
C.llama_backend_init()
atexit.register(_at_exit)


def llama_cpp_version():
    """Version string of the linked llama.cpp library."""
    return C.llama_version().decode()


def system_info():
    """llama.cpp's description of the CPU features and backends it was built with."""
    return C.llama_print_system_info().decode()


_QUANT_TYPES = {
    "f16": C.LLAMA_FTYPE_MOSTLY_F16, "q8_0": C.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": C.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q4_k_m": C.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q5_k_m": C.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "q6_k": C.LLAMA_FTYPE_MOSTLY_Q6_K,
}


def quantize(src, dst, str ftype="q8_0", int n_threads=0):
    """Write a quantised copy of a GGUF model with llama.cpp's quantizer.

    ftype: one of ``f16``, ``q8_0``, ``q4_0``, ``q4_k_m``, ``q5_k_m``, ``q6_k``.
    """
    if ftype not in _QUANT_TYPES:
        raise ValueError(f"ftype must be one of {sorted(_QUANT_TYPES)}, got {ftype!r}")
    src = _validate_path(src)
    cdef bytes bsrc = os.fsencode(src)
    cdef bytes bdst = os.fsencode(os.fspath(dst))
    cdef C.llama_model_quantize_params params = C.llama_model_quantize_default_params()
    params.ftype = _QUANT_TYPES[ftype]
    params.nthread = n_threads
    cdef const char * csrc = bsrc
    cdef const char * cdst = bdst
    cdef uint32_t rc
    _take_problems()
    with nogil:
        rc = C.llama_model_quantize(csrc, cdst, &params)
    if rc != 0:
        detail = "; ".join(_take_problems()[-3:]) or f"status {rc}"
        raise ModelLoadError(f"llama.cpp could not quantize {src!r} to {ftype}: {detail}")
    return os.fspath(dst)


def supports_gpu_offload():
    return bool(C.llama_supports_gpu_offload())


_DEVICE_KINDS = {C.GGML_BACKEND_DEVICE_TYPE_CPU: "cpu", C.GGML_BACKEND_DEVICE_TYPE_GPU: "gpu",
                 C.GGML_BACKEND_DEVICE_TYPE_IGPU: "igpu", C.GGML_BACKEND_DEVICE_TYPE_ACCEL: "accel"}


def devices():
    """The devices of the back ends this build of ggml has, as dicts with ``name`` (e.g.
    ``CPU``, ``CUDA0``, ``Vulkan0``), ``description`` and ``kind`` (cpu, gpu, igpu, accel).
    A GPU back end built in but with no usable device (no driver) lists none."""
    cdef size_t i
    cdef C.ggml_backend_dev_t dev
    out = []
    for i in range(C.ggml_backend_dev_count()):
        dev = C.ggml_backend_dev_get(i)
        out.append({"name": C.ggml_backend_dev_name(dev).decode("utf-8", "replace"),
                    "description": C.ggml_backend_dev_description(dev).decode("utf-8", "replace"),
                    "kind": _DEVICE_KINDS.get(C.ggml_backend_dev_kind_of(dev), "other")})
    return out


def _has_gpu_device():
    return any(d["kind"] in ("gpu", "igpu") for d in devices())


def _has_cuda_device():
    """A ggml CUDA device is usable: the back end that captures and replays CUDA graphs."""
    return any(d["name"].startswith("CUDA") for d in devices())


# --------------------------------------------------------------------------- helpers

# Pieces that stand for the mask token in the diffusion model families we know
# (SDAR / TraDo, Dream, LLaDA), tried when the GGUF does not name a mask token id.
MASK_TOKEN_TEXTS = ("<|MASK|>", "<|mask|>", "<|mdm_mask|>", "[MASK]")

# Bodies that llama.cpp's llama_model::create_memory (src/llama-model.cpp) gives no memory
# (encoders) or a cache of its own kind (sparse-attention indexers, compressed or
# sliding-window layers) instead of the plain llama_kv_cache that block-causal attention
# (vendor/patches/0003) works through. tests/test_bodies.py checks this list against the
# switch of the pinned source, so a llama.cpp update that adds one fails there.
NO_MEMORY_ARCHS = frozenset({"bert", "modern-bert", "nomic-bert", "nomic-bert-moe", "neo-bert",
                             "jina-bert-v2", "jina-bert-v3", "eurobert", "gemma-embedding",
                             "wavtokenizer-dec"})
OWN_CACHE_ARCHS = frozenset({"minimax-m3", "glm-dsa", "deepseek32", "glm5-next", "hy_v4",
                             "dots3note", "deepseek4", "dflash"})

_KV_TYPES = {
    "f32": C.GGML_TYPE_F32, "f16": C.GGML_TYPE_F16, "bf16": C.GGML_TYPE_BF16,
    "q8_0": C.GGML_TYPE_Q8_0, "q4_0": C.GGML_TYPE_Q4_0,
}


def _usable_cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def physical_cores():
    """Physical cores among the CPUs this process may run on (Linux sysfs topology; elsewhere
    the logical count)."""
    cpus = _usable_cpus()
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(base + "core_id") as f:
                core = f.read().strip()
            with open(base + "physical_package_id") as f:
                package = f.read().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))


def default_threads():
    """The n_threads default: the physical cores, but one logical CPU left free.

    llama.cpp's CPU threads spin-wait for each other; when every usable CPU is taken, anything
    else running (the Python thread that drives generation, an HTTP server, another process)
    preempts one and the others spin: on a busy 2-core machine a decode at 2 threads took 200x
    longer than at 1 (docs/BENCHMARKS.md). Hyper-threads add little to llama.cpp's matrix
    kernels, so the physical cores are the ceiling (llama.cpp's own default); leaving one logical
    CPU free is the margin (llama-cpp-python leaves half). 1 on a 2-core machine, 7 on an
    8-core one without SMT, 8 on an 8-core / 16-thread one.
    """
    logical = len(_usable_cpus())
    return max(1, min(physical_cores(), logical - 1))


cdef str _read_c_string(int32_t (*getter)(const llama_model *, int32_t, char *, size_t),
                        const llama_model * model, int32_t index):
    """Call one of llama.cpp's snprintf-style metadata getters with a large enough buffer."""
    cdef int32_t n = getter(model, index, NULL, 0)
    if n < 0:
        return None
    cdef char * buf = <char *> malloc(n + 1)
    if buf == NULL:
        raise MemoryError()
    try:
        getter(model, index, buf, n + 1)
        return buf[:n].decode("utf-8", "replace")
    finally:
        free(buf)


def _validate_path(path):
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"model path must be a str or os.PathLike, not {type(path).__name__}") from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"model path is a directory, not a GGUF file: {path!r}")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"model file is not readable: {path!r}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{path!r} is not a GGUF file (it starts with {magic!r}, "
                             "a GGUF file starts with b'GGUF')")
    return path


# GGUF's numeric value types as struct formats (native order: ggml has parsed the file)
_GGUF_STRUCT = {C.GGUF_TYPE_UINT8: "B", C.GGUF_TYPE_INT8: "b", C.GGUF_TYPE_UINT16: "H",
                C.GGUF_TYPE_INT16: "h", C.GGUF_TYPE_UINT32: "I", C.GGUF_TYPE_INT32: "i",
                C.GGUF_TYPE_UINT64: "Q", C.GGUF_TYPE_INT64: "q", C.GGUF_TYPE_FLOAT32: "f",
                C.GGUF_TYPE_FLOAT64: "d", C.GGUF_TYPE_BOOL: "?"}


cdef list _gguf_numbers(C.gguf_type t, const void * data, size_t n):
    """n values of numeric type t at data, as Python numbers."""
    code = _GGUF_STRUCT[t]
    size = struct.calcsize("=" + code)
    return list(struct.unpack(f"={n}{code}", (<const char *> data)[:n * size]))


def read_gguf_header(path):
    """The exact values of a GGUF file's header: ``(metadata, tensor_shapes)``.

    ``metadata`` maps each key to its value: numbers and bools as Python numbers (float32
    values exactly, unlike the strings of ``Model.metadata``), strings as str, numeric arrays
    as lists, string arrays as their length only. ``tensor_shapes`` maps each tensor name to
    its ``ne`` (ggml order: ``ne[0]`` is the row length). Reads only the header (llama.cpp's
    own GGUF parser), not the weights.
    """
    cdef bytes bpath = os.fsencode(os.fspath(path))
    cdef const char * cpath = bpath
    cdef C.gguf_init_params params
    params.no_alloc = True
    params.ctx = NULL
    cdef C.gguf_context * g
    with nogil:
        g = C.gguf_init_from_file(cpath, params)
    if g == NULL:
        raise ModelLoadError(f"{os.fsdecode(bpath)!r}: not a readable GGUF header")
    cdef int64_t i, n
    cdef C.gguf_type t, at
    cdef const int64_t * ne
    meta, shapes = {}, {}
    try:
        for i in range(C.gguf_get_n_kv(g)):
            key = C.gguf_get_key(g, i).decode("utf-8", "replace")
            t = C.gguf_get_kv_type(g, i)
            if t == C.GGUF_TYPE_STRING:
                meta[key] = C.gguf_get_val_str(g, i).decode("utf-8", "replace")
            elif t == C.GGUF_TYPE_ARRAY:
                at = C.gguf_get_arr_type(g, i)
                n = C.gguf_get_arr_n(g, i)
                if at in _GGUF_STRUCT:
                    meta[key] = _gguf_numbers(at, C.gguf_get_arr_data(g, i), n)
                else:
                    meta[key] = n           # strings (the vocabulary) or nested arrays: their count
            elif t in _GGUF_STRUCT:
                meta[key] = _gguf_numbers(t, C.gguf_get_val_data(g, i), 1)[0]
        for i in range(C.gguf_get_n_tensors(g)):
            ne = C.gguf_get_tensor_ne(g, i)
            shapes[C.gguf_get_tensor_name(g, i).decode("utf-8", "replace")] = (ne[0], ne[1], ne[2], ne[3])
    finally:
        C.gguf_free(g)
    return meta, shapes


def read_gguf_strings(path, keys):
    """The string arrays ``keys`` of a GGUF file's header (e.g. ``tokenizer.ggml.tokens``):
    ``{key: [str, ...]}`` for those present (bytes that are not UTF-8 are replaced)."""
    cdef bytes bpath = os.fsencode(os.fspath(path))
    cdef const char * cpath = bpath
    cdef C.gguf_init_params params
    params.no_alloc = True
    params.ctx = NULL
    cdef C.gguf_context * g
    cdef int64_t k
    cdef size_t i, n
    cdef bytes bkey
    with nogil:
        g = C.gguf_init_from_file(cpath, params)
    if g == NULL:
        raise ModelLoadError(f"{os.fsdecode(bpath)!r}: not a readable GGUF header")
    out = {}
    try:
        for key in keys:
            bkey = key.encode()
            k = C.gguf_find_key(g, bkey)
            if k < 0 or C.gguf_get_kv_type(g, k) != C.GGUF_TYPE_ARRAY or \
                    C.gguf_get_arr_type(g, k) != C.GGUF_TYPE_STRING:
                continue
            n = C.gguf_get_arr_n(g, k)
            out[key] = [C.gguf_get_arr_str(g, k, i).decode("utf-8", "replace") for i in range(n)]
    finally:
        C.gguf_free(g)
    return out


# --------------------------------------------------------------------------- lifetime


cdef class _Resource:
    """Deterministic cleanup shared by Model and Context.

    ``close()`` frees the native handle now, or, while users still hold it (Contexts of a
    Model, NumPy views of a Context's logits), as soon as the last one lets go. Safe to
    call more than once; also a context manager.
    """

    def __cinit__(self):
        self._users = 0
        self._close_requested = False

    cdef void _free(self) noexcept:
        pass

    cdef void _release_user(self) noexcept:
        self._users -= 1
        if self._close_requested and self._users == 0:
            self._free()

    def close(self):
        """Free the native resources (deferred while they are still in use); idempotent."""
        self._close_requested = True
        if self._users == 0:
            self._free()

    @property
    def closed(self):
        """True once close() was called (or the handle was never made)."""
        return self._close_requested or self._is_null()

    def _is_null(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------- Model


ctypedef C.ggml_backend_reg_t (*rpc_add_server_fn)(const char * endpoint) noexcept nogil


cdef void * _rpc_proc(const char * name) except? NULL:
    cdef C.ggml_backend_reg_t rpc = C.ggml_backend_reg_by_name(b"RPC")
    if rpc == NULL:
        raise RuntimeError("this build of llamadiff has no RPC backend; reinstall with LLAMADIFF_RPC=1")
    cdef void * fn = C.ggml_backend_reg_get_proc_address(rpc, name)
    if fn == NULL:
        raise RuntimeError(f"the RPC backend has no {name.decode()} (built without llamadiff's patches?)")
    return fn


def _hook_sigint():
    """Put interrupt.h's SIGINT hook in front of Python's default handler (a handler of the
    user's own is left alone: it decides what Ctrl-C does)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        ld_install_sigint_hook()


# ggml_backend_rpc_set_interrupt (vendor/patches/0006): Ctrl-C switches it on (interrupt.h)
cdef ld_interrupt_fn _rpc_set_interrupt = NULL


cdef int _rpc_prepare(double timeout) except -1:
    """Bound the socket waits of the RPC connections opened from now on (vendor/patches/0006)
    and look up the interrupt switch."""
    global _rpc_set_interrupt
    cdef ld_rpc_set_timeout_fn set_timeout = <ld_rpc_set_timeout_fn> _rpc_proc(b"ggml_backend_rpc_set_timeout")
    if _rpc_set_interrupt == NULL:
        _rpc_set_interrupt = <ld_interrupt_fn> _rpc_proc(b"ggml_backend_rpc_set_interrupt")
        ld_interrupt_set_extra(_rpc_set_interrupt)
    set_timeout(timeout)
    _hook_sigint()
    return 0


cdef int _raise_interrupt() except -1:
    """A Ctrl-C seen by interrupt.h's hook: Python's KeyboardInterrupt (or the exception of a
    handler of the user's), raised even when Python's own flag was taken meanwhile -- by a log
    callback that ran Python code, say."""
    PyErr_CheckSignals()
    raise KeyboardInterrupt


cdef inline void _rpc_enter() noexcept nogil:
    """Before a call that may wait on RPC servers: from now on Ctrl-C interrupts those waits."""
    ld_interrupt_clear()


cdef inline bint _rpc_leave() noexcept nogil:
    """After it: True when SIGINT came meanwhile (the caller then runs PyErr_CheckSignals);
    the RPC interrupt switch goes off again, so later calls are not cut short."""
    cdef bint seen = ld_interrupt_pending()
    if _rpc_set_interrupt != NULL:
        _rpc_set_interrupt(False)
    return seen


cdef int _add_rpc_devices(str endpoint, vector[C.ggml_backend_dev_t] & devices,
                          double timeout) except -1:
    """Connect to a ggml RPC server (llama.cpp keeps one connection per endpoint) and append
    its devices."""
    cdef rpc_add_server_fn add = <rpc_add_server_fn> _rpc_proc(b"ggml_backend_rpc_add_server")
    cdef bytes bend = endpoint.encode()
    cdef const char * cend = bend
    cdef C.ggml_backend_reg_t reg
    with nogil:
        reg = add(cend)
    if reg == NULL:
        if rpc_connection_failed():
            detail = "; ".join(_take_problems()[-2:])
            raise ConnectionError(f"RPC server {endpoint} stopped answering after the handshake "
                                  f"(no progress within rpc_timeout={timeout:g} s, or the connection "
                                  f"was closed or interrupted){': ' + detail if detail else ''}")
        raise ConnectionError(f"RPC server {endpoint} reports no devices")
    # not ggml_backend_register()ed: registered devices are offered to every later model
    # (and probed when it loads), so a server that goes away would break unrelated models;
    # the devices reach llama.cpp through llama_model_params.devices only
    cdef size_t i
    for i in range(C.ggml_backend_reg_dev_count(reg)):
        devices.push_back(C.ggml_backend_reg_dev_get(reg, i))
    return 0


ctypedef cbool (*rpc_failed_fn)() noexcept nogil
cdef rpc_failed_fn _rpc_failed = NULL


cdef bint rpc_connection_failed() noexcept:
    """True once an RPC connection of this process was lost (vendor/patches/0005)."""
    global _rpc_failed
    cdef C.ggml_backend_reg_t rpc
    if _rpc_failed == NULL:
        rpc = C.ggml_backend_reg_by_name(b"RPC")
        if rpc == NULL:
            return False
        _rpc_failed = <rpc_failed_fn> C.ggml_backend_reg_get_proc_address(rpc, b"ggml_backend_rpc_connection_failed")
        if _rpc_failed == NULL:
            return False
    return _rpc_failed()


cdef class Model(_Resource):
    """A GGUF model loaded by llama.cpp.

    Parameters
    ----------
    path: path of a ``.gguf`` file.
    n_gpu_layers: layers to offload to a GPU (0: CPU only, -1: all).
    use_mmap: memory-map the file instead of reading it.
    vocab_only: load only the vocabulary and metadata (fast; no weights, no decoding).
    rpc_servers: ["host:port", ...] of ggml rpc-servers that hold the layers (llamadiff.rpc).
    rpc_timeout: seconds (> 0) any wait on an RPC server may last without progress: the
        handshake check, connecting, and each send and receive of every later request
        (a graph computation included); then the connection fails and ConnectionError is
        raised. Ctrl-C interrupts such waits at once.
    """

    def __cinit__(self):
        self.ptr = NULL
        self.vocab = NULL

    def __init__(self, path, *, int n_gpu_layers=0, bint use_mmap=True, bint vocab_only=False,
                 rpc_servers=None, rpc_timeout=_RPC_DEFAULT_TIMEOUT):
        if self.ptr != NULL:
            raise RuntimeError("Model is already initialised")
        self.path = _validate_path(path)
        self.rpc_timeout = _rpc_validate_timeout(rpc_timeout, "rpc_timeout")
        # values llama.cpp cannot run with, or would run with silently wrong: refused before any
        # weight is read (an unreadable header is left to llama.cpp's loader, whose error says more)
        try:
            header = read_gguf_header(self.path)
        except ModelLoadError:
            header = None
        if header is not None:
            from llamadiff import hparams, vocab_check
            vocab_check.check(self.path, header[0])
            if not vocab_only:
                hparams.check(self.path, *header)
        cdef C.llama_model_params params = C.llama_model_default_params()
        cdef vector[C.ggml_backend_dev_t] devices
        params.n_gpu_layers = n_gpu_layers
        params.load_mode = C.LLAMA_LOAD_MODE_MMAP if use_mmap else C.LLAMA_LOAD_MODE_NONE
        params.vocab_only = vocab_only
        cdef bytes bpath = os.fsencode(self.path)
        cdef const char * cpath = bpath
        cdef llama_model * model = NULL
        endpoints = None
        local_offload = n_gpu_layers != 0 and not rpc_servers and not vocab_only
        self.on_gpu = local_offload and _has_gpu_device()
        if local_offload and not self.on_gpu:
            logger.warning("n_gpu_layers=%d but this build of ggml has no usable GPU device (a CPU-only "
                           "build, or no driver / device for its GPU back end): %s runs on the CPU",
                           n_gpu_layers, os.path.basename(self.path))
        if rpc_servers:
            # checked with the Python handshake first (bounded by rpc_timeout)
            from llamadiff import rpc
            endpoints = rpc.check_servers(rpc_servers, self.rpc_timeout)
            _rpc_prepare(self.rpc_timeout)
        _take_problems()
        if endpoints is not None:
            _rpc_enter()
        try:
            if endpoints is not None:
                # the model's layers go to these servers only
                for endpoint in endpoints:
                    _add_rpc_devices(endpoint, devices, self.rpc_timeout)
                devices.push_back(NULL)
                params.devices = devices.data()
                if n_gpu_layers == 0:
                    params.n_gpu_layers = -1
            with nogil:
                model = C.llama_model_load_from_file(cpath, params)
        finally:
            if endpoints is not None and _rpc_leave():
                if model != NULL:
                    with nogil:
                        C.llama_model_free(model)
                _raise_interrupt()
        problems = _take_problems()
        if rpc_servers and rpc_connection_failed():
            if model != NULL:
                with nogil:     # frees remote buffers: the RPC thread may need the GIL to log
                    C.llama_model_free(model)
            raise ConnectionError(f"lost the connection to an RPC server while loading {self.path!r} "
                                  f"(no progress within rpc_timeout={self.rpc_timeout:g} s, or the "
                                  "connection was closed or interrupted): "
                                  + ("; ".join(problems[-3:]) or "no reason given"))
        if model == NULL:
            detail = "; ".join(problems[-4:]) or "llama.cpp gave no reason"
            raise ModelLoadError(f"llama.cpp could not load {self.path!r}: {detail}")
        self.ptr = model
        self.uses_rpc = bool(rpc_servers)
        self.vocab = C.llama_model_get_vocab(model)
        if self.vocab == NULL or C.llama_vocab_type_of(self.vocab) == C.LLAMA_VOCAB_TYPE_NONE:
            self._free()
            raise UnsupportedModelError(f"{self.path!r} has no tokenizer vocabulary; "
                                        "llamadiff needs one to tokenize prompts")
        self.n_vocab = C.llama_vocab_n_tokens(self.vocab)
        if not C.llama_model_has_decoder(model) or C.llama_model_has_encoder(model):
            self._free()
            raise UnsupportedModelError(f"{self.path!r}: encoder models are not supported")
        self.vocab_only = vocab_only
        try:
            self.tokenize("Hello world\n 1", add_special=True)   # fails now, not at the first prompt
        except BaseException:
            self._free()
            raise
        if not vocab_only:
            try:
                self._validate_hparams()
            except BaseException:
                self._free()
                raise

    cdef int _validate_hparams(self) except -1:
        """Reject shapes that would reach a C-level GGML_ASSERT (process abort) in ggml.

        llama.cpp checks tensor shapes against hyper-parameters, but products such as
        head_dim * n_head_kv can overflow and still match; ggml then asserts on a reshape.
        """
        n_layer = C.llama_model_n_layer(self.ptr)
        n_embd = C.llama_model_n_embd(self.ptr)
        if n_layer < 1 or n_embd < 1:
            raise ModelLoadError(f"{self.path!r}: invalid model shape (n_layer={n_layer}, n_embd={n_embd})")
        # (per-layer getters abort the process when n_layer is 0: only called after the check)
        n_head = C.llama_model_n_head(self.ptr)
        n_head_kv = C.llama_model_n_head_kv(self.ptr)
        if n_head < 0 or n_head > 65536 or n_head_kv < 0 or n_head_kv > n_head \
                or (n_head_kv > 0 and n_head % n_head_kv != 0):
            raise ModelLoadError(f"{self.path!r}: invalid attention heads (n_head={n_head}, "
                                 f"n_head_kv={n_head_kv})")
        return 0

    def __dealloc__(self):
        self._free()

    cdef void _free(self) noexcept:
        cdef llama_model * ptr = self.ptr
        if ptr != NULL:
            self.ptr = NULL
            self.vocab = NULL
            if self.uses_rpc:
                with nogil:     # frees remote buffers: the RPC thread may need the GIL to log
                    ld_interrupt_clear()    # a Ctrl-C seen earlier must not cut the free short
                    C.llama_model_free(ptr)
            else:
                C.llama_model_free(ptr)

    def _is_null(self):
        return self.ptr == NULL

    cdef int _check_open(self) except -1:
        if self.ptr == NULL or self._close_requested:
            raise ValueError("the Model is closed")
        return 0

    cdef int _check_token(self, long token) except -1:
        if token < 0 or token >= self.n_vocab:
            raise ValueError(f"token id {token} is out of range for a vocabulary of {self.n_vocab}")
        return 0

    def __repr__(self):
        if self.closed:
            return "<llamadiff.Model closed>"
        return (f"<llamadiff.Model {os.path.basename(self.path)!r} arch={self.architecture!r} "
                f"family={self.family!r} n_vocab={self.n_vocab}>")

    # -- description ------------------------------------------------------------

    @property
    def metadata(self):
        """GGUF key/value metadata as a dict of strings (arrays are summarised by llama.cpp)."""
        self._check_open()
        if self._metadata_cache is None:
            out = {}
            for i in range(C.llama_model_meta_count(self.ptr)):
                key = _read_c_string(C.llama_model_meta_key_by_index, self.ptr, i)
                if key is not None:
                    out[key] = _read_c_string(C.llama_model_meta_val_str_by_index, self.ptr, i)
            self._metadata_cache = out
        return dict(self._metadata_cache)

    def meta(self, str key, default=None):
        """One metadata value as a string, or ``default``."""
        self._check_open()
        if self._metadata_cache is None:
            self.metadata
        return self._metadata_cache.get(key, default)

    @property
    def architecture(self):
        return self.meta("general.architecture")

    @property
    def description(self):
        self._check_open()
        cdef char buf[256]
        n = C.llama_model_desc(self.ptr, buf, sizeof(buf))
        return buf[:max(0, min(n, 255))].decode("utf-8", "replace")

    @property
    def is_diffusion(self):
        """True for llama.cpp's diffusion architectures (LLaDA, Dream, RND1...)."""
        self._check_open()
        return bool(C.llama_model_is_diffusion(self.ptr))

    @property
    def family(self):
        """``"full"`` for llama.cpp diffusion archs, ``"block"`` for causal bodies with a mask
        token that block diffusion can run on (SDAR-style; see ``block_diffusion_problem``),
        ``None`` for other models."""
        if self.is_diffusion:
            return "full"
        if self.mask_token_id is not None and self.block_diffusion_problem is None:
            return "block"
        return None

    @property
    def block_diffusion_problem(self):
        """Why block diffusion cannot run on this model's body (a phrase), or None when it can.

        The one place that decides which causal bodies qualify. Block diffusion re-decodes
        each block's positions step after step, with block-causal attention applied through
        llama.cpp's standard KV cache (vendor/patches/0003); any causal body whose attention
        lives in that cache qualifies (qwen3, qwen3moe, qwen2, llama, bailingmoe2 are tested
        against a NumPy reference). Refused, because that does not hold for them:
        recurrent or hybrid memory (a running state cannot take a step back), sliding-window
        attention and the bodies llama.cpp gives a cache of their own kind (the block-causal
        mask does not reach those caches), encoders and encoder-decoder bodies, and
        multi-axis RoPE (positions with several coordinates per token)."""
        self._check_open()
        arch = self.architecture
        if C.llama_model_is_diffusion(self.ptr):
            return ("it is a full-diffusion architecture (bidirectional attention over the whole "
                    "sequence), which runs as full diffusion")
        if C.llama_model_has_encoder(self.ptr):
            return "it is an encoder-decoder model; block diffusion needs a decoder-only body"
        if arch in NO_MEMORY_ARCHS or self.meta(f"{arch}.attention.causal") == "false":
            return ("it is an encoder (bidirectional, no KV cache); block diffusion needs a causal "
                    "decoder body")
        if arch in OWN_CACHE_ARCHS:
            return ("llama.cpp keeps its attention in a cache of its own kind (sparse-attention "
                    "indexer or compressed layers) that block-causal attention does not reach")
        if C.llama_model_is_recurrent(self.ptr):
            return ("its layers are recurrent (a running state, not a KV cache): a denoising step "
                    "cannot be taken back and re-decoded")
        if C.llama_model_is_hybrid(self.ptr):
            return ("it has recurrent layers beside attention (hybrid memory): their running state "
                    "cannot take a denoising step back")
        if C.llama_model_n_swa(self.ptr) > 0:
            return ("it uses sliding-window attention, which llama.cpp keeps in a separate cache "
                    "that block-causal attention does not reach")
        cdef int rope = C.llama_model_rope_type(self.ptr)
        if rope == C.LLAMA_ROPE_TYPE_MROPE or rope == C.LLAMA_ROPE_TYPE_IMROPE \
                or rope == C.LLAMA_ROPE_TYPE_VISION:
            return "it uses multi-axis RoPE (several position coordinates per token)"
        return None

    @property
    def mask_token_id(self):
        """The mask token: the GGUF's mask token id, else a known mask piece; or None."""
        self._check_open()
        cdef llama_token tok = C.llama_vocab_mask(self.vocab)
        if tok >= 0:
            return int(tok)
        for text in MASK_TOKEN_TEXTS:
            ids = self.tokenize(text, add_special=False, parse_special=True)
            if len(ids) == 1 and self.token_to_piece(ids[0], special=True) == text:
                return ids[0]
        return None

    @property
    def n_ctx_train(self):
        self._check_open()
        return C.llama_model_n_ctx_train(self.ptr)

    @property
    def n_embd(self):
        self._check_open()
        return C.llama_model_n_embd(self.ptr)

    @property
    def n_layer(self):
        self._check_open()
        return C.llama_model_n_layer(self.ptr)

    @property
    def n_head(self):
        """Attention heads (of layer 0); None for a vocab-only model."""
        self._check_open()
        if C.llama_model_n_layer(self.ptr) < 1:
            return None     # llama.cpp aborts on per-layer queries without layers
        return C.llama_model_n_head(self.ptr)

    @property
    def n_head_kv(self):
        """KV heads (of layer 0); None for a vocab-only model."""
        self._check_open()
        if C.llama_model_n_layer(self.ptr) < 1:
            return None
        return C.llama_model_n_head_kv(self.ptr)

    @property
    def size(self):
        """Bytes of all weight tensors."""
        self._check_open()
        return int(C.llama_model_size(self.ptr))

    @property
    def n_params(self):
        self._check_open()
        return int(C.llama_model_n_params(self.ptr))

    @property
    def file_type(self):
        """Quantisation of the weights, e.g. ``"F16"`` or ``"Q8_0"``."""
        self._check_open()
        return C.llama_ftype_name(C.llama_model_ftype(self.ptr)).decode()

    @property
    def chat_template(self):
        """The model's default chat template (Jinja text) or None."""
        self._check_open()
        cdef const char * tmpl = C.llama_model_chat_template(self.ptr, NULL)
        return None if tmpl == NULL else tmpl.decode("utf-8", "replace")

    # -- special tokens -----------------------------------------------------------

    @property
    def bos_token_id(self):
        self._check_open()
        return _optional_token(C.llama_vocab_bos(self.vocab))

    @property
    def eos_token_id(self):
        self._check_open()
        return _optional_token(C.llama_vocab_eos(self.vocab))

    @property
    def eot_token_id(self):
        self._check_open()
        return _optional_token(C.llama_vocab_eot(self.vocab))

    @property
    def eog_token_ids(self):
        """All end-of-generation tokens (EOS, EOT, ``<|im_end|>``...), sorted."""
        self._check_open()
        cdef int i
        return [i for i in range(self.n_vocab) if C.llama_vocab_is_eog(self.vocab, i)]

    def is_eog(self, int token):
        self._check_open()
        self._check_token(token)
        return bool(C.llama_vocab_is_eog(self.vocab, token))

    def is_control(self, int token):
        self._check_open()
        self._check_token(token)
        return bool(C.llama_vocab_is_control(self.vocab, token))

    def token_text(self, int token):
        """The vocabulary entry of ``token`` as stored (e.g. ``'Ġworld'`` for GPT-2 vocabs)."""
        self._check_open()
        self._check_token(token)
        return C.llama_vocab_get_text(self.vocab, token).decode("utf-8", "replace")

    # -- text <-> tokens ------------------------------------------------------------

    def tokenize(self, text, *, add_special=True, bint parse_special=False, add_bos=None, special=None):
        """Token ids of ``text`` (str or bytes).

        ``add_special`` adds BOS/EOS where the model asks for them; ``parse_special``
        turns special-token texts such as ``<|im_start|>`` into their ids. llama-cpp-python's
        names are accepted too: ``add_bos`` (for ``add_special``), ``special`` (for
        ``parse_special``).
        """
        if add_bos is not None:
            add_special = add_bos
        if special is not None:
            parse_special = special
        self._check_open()
        cdef bytes data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        if len(data) > 0x7FFFFFF0:
            raise ValueError("text is too long to tokenize")
        cdef int32_t n_text = len(data)
        cdef int32_t cap = n_text + 8
        cdef llama_token * out = <llama_token *> malloc(cap * sizeof(llama_token))
        cdef int32_t n
        cdef const char * cdata = data
        if out == NULL:
            raise MemoryError()
        try:
            try:
                n = C.llama_tokenize(self.vocab, cdata, n_text, out, cap, add_special, parse_special)
            except (IndexError, KeyError) as exc:
                # llama.cpp looks tokens up with unordered_map::at: a vocabulary that lacks
                # one its tokenizer needs (e.g. SentencePiece's byte tokens <0x0A>) throws
                raise ModelLoadError(
                    f"the vocabulary of {self.path!r} cannot tokenize this text: it lacks a token its "
                    f"tokenizer ({self.meta('tokenizer.ggml.model', '?')}) needs ({exc}); the file's "
                    "tokenizer.ggml.* data is incomplete or mis-converted") from None
            if n < 0:
                if n == -2147483648:
                    raise ValueError("tokenization overflowed")
                cap = -n
                free(out)
                out = <llama_token *> malloc(cap * sizeof(llama_token))
                if out == NULL:
                    raise MemoryError()
                n = C.llama_tokenize(self.vocab, cdata, n_text, out, cap, add_special, parse_special)
                if n < 0:
                    raise RuntimeError("llama_tokenize failed")
            return [out[i] for i in range(n)]
        finally:
            free(out)

    def token_to_piece(self, int token, *, bint special=True):
        """The text of one token (special tokens rendered when ``special``)."""
        return self.token_bytes(token, special=special).decode("utf-8", "replace")

    def token_bytes(self, int token, *, bint special=True):
        """The raw bytes of one token (a piece may hold part of a UTF-8 character)."""
        self._check_open()
        self._check_token(token)
        cdef char buf[128]
        cdef int32_t n = C.llama_token_to_piece(self.vocab, token, buf, sizeof(buf), 0, special)
        cdef char * big
        if n >= 0:
            return buf[:n]
        big = <char *> malloc(-n)
        if big == NULL:
            raise MemoryError()
        try:
            n = C.llama_token_to_piece(self.vocab, token, big, -n, 0, special)
            return big[:max(n, 0)]
        finally:
            free(big)

    def detokenize(self, tokens, *, bint special=False, bint remove_special=False):
        """Text of a token sequence. ``special`` renders special tokens such as ``<|im_end|>``."""
        return self.detokenize_bytes(tokens, special=special,
                                     remove_special=remove_special).decode("utf-8", "replace")

    def detokenize_bytes(self, tokens, *, bint special=False, bint remove_special=False):
        self._check_open()
        ids = [int(t) for t in tokens]
        cdef int32_t n_tok = len(ids)
        if n_tok == 0:
            return b""
        cdef llama_token * buf = <llama_token *> malloc(n_tok * sizeof(llama_token))
        cdef int32_t cap = n_tok * 8 + 16
        cdef char * text = NULL
        cdef int32_t n, i
        if buf == NULL:
            raise MemoryError()
        try:
            for i in range(n_tok):
                self._check_token(ids[i])
                buf[i] = ids[i]
            text = <char *> malloc(cap)
            if text == NULL:
                raise MemoryError()
            n = C.llama_detokenize(self.vocab, buf, n_tok, text, cap, remove_special, special)
            if n < 0:
                cap = -n
                free(text)
                text = <char *> malloc(cap)
                if text == NULL:
                    raise MemoryError()
                n = C.llama_detokenize(self.vocab, buf, n_tok, text, cap, remove_special, special)
            return text[:max(n, 0)]
        finally:
            free(buf)
            free(text)

    def apply_chat_template(self, messages, *, bint add_generation_prompt=True, template=None, max_chars=None,
                            **variables):
        """Format ``[{"role": ..., "content": ...}, ...]`` as the model's prompt text.

        ``template``: None (the model's ``tokenizer.chat_template``), Jinja text, or the name
        of one of llama.cpp's built-in formats (``chat_builtin_templates()``, e.g.
        ``"chatml"``). Jinja text is rendered by ``llamadiff.chat`` in Jinja2's sandbox with
        the model's ``bos_token`` / ``eos_token`` text; ``variables`` (e.g. ``tools``,
        ``enable_thinking``) reach the template as they are. A built-in name is formatted by
        llama.cpp. A Jinja render is bounded in time (``llamadiff.chat.RENDER_SECONDS``) and in
        the characters it may print (``max_chars``, default ``llamadiff.chat.MAX_RENDER_CHARS``).
        """
        self._check_open()
        if template is None:
            template = self.chat_template
        if template is None:
            raise UnsupportedModelError(
                "this model has no chat template (GGUF key tokenizer.chat_template): give a plain "
                "prompt, or a template -- Generator(..., chat_template=...) with Jinja text or a "
                "built-in name such as 'chatml'")
        if _chat.check_template(template):
            if variables:
                raise TypeError(f"llama.cpp's built-in {template!r} format takes no template variables "
                                f"({', '.join(sorted(variables))})")
            return self._apply_builtin_template(template, _chat.check_messages(messages),
                                                add_generation_prompt)
        bos, eos = self.bos_token_id, self.eos_token_id
        return _chat.render(template, messages, add_generation_prompt=add_generation_prompt,
                            bos_token="" if bos is None else self.token_to_piece(bos, special=True),
                            eos_token="" if eos is None else self.token_to_piece(eos, special=True),
                            max_chars=_chat.MAX_RENDER_CHARS if max_chars is None else max_chars,
                            **variables)

    def _apply_builtin_template(self, str name, list msgs, bint add_generation_prompt):
        """llama.cpp's formatting of its built-in format ``name``."""
        encoded = []
        for m in msgs:
            if m["content"] is None:
                raise TypeError("llama.cpp's built-in formats need str content in every message")
            encoded.append((m["role"].encode(), m["content"].encode()))
        cdef C.llama_chat_message * chat = <C.llama_chat_message *> malloc(
            len(encoded) * sizeof(C.llama_chat_message))
        cdef bytes btmpl = name.encode()
        cdef int32_t cap = 2 * sum(len(r) + len(c) for r, c in encoded) + 256
        cdef char * buf = NULL
        cdef int32_t n
        if chat == NULL:
            raise MemoryError()
        try:
            for i, (r, c) in enumerate(encoded):
                chat[i].role = r
                chat[i].content = c
            for _ in range(2):
                buf = <char *> malloc(cap)
                if buf == NULL:
                    raise MemoryError()
                n = C.llama_chat_apply_template(btmpl, chat, len(encoded), add_generation_prompt, buf, cap)
                if n < 0:
                    raise ChatTemplateError(f"llama.cpp could not format these messages as {name!r}")
                if n <= cap:
                    return buf[:n].decode("utf-8", "replace")
                free(buf)
                buf = NULL
                cap = n + 1
            raise RuntimeError("llama_chat_apply_template kept growing")
        finally:
            free(chat)
            free(buf)


def chat_builtin_templates():
    """Names of llama.cpp's built-in chat formats (``Model.apply_chat_template(template=name)``)."""
    global _BUILTIN_TEMPLATES
    if _BUILTIN_TEMPLATES is None:
        n = C.llama_chat_builtin_templates(NULL, 0)
        names = <const char **> malloc(max(n, 1) * sizeof(const char *))
        if names == NULL:
            raise MemoryError()
        try:
            n = C.llama_chat_builtin_templates(names, n)
            _BUILTIN_TEMPLATES = tuple(sorted(names[i].decode() for i in range(n)))
        finally:
            free(names)
    return _BUILTIN_TEMPLATES


_BUILTIN_TEMPLATES = None


# --------------------------------------------------------------------------- logits view


cdef class _LogitsBuffer:
    """Read-only buffer over llama.cpp's logits; keeps its Context from being freed."""
    cdef Context ctx
    cdef float * data
    cdef Py_ssize_t shape[2]
    cdef Py_ssize_t strides[2]

    def __getbuffer__(self, Py_buffer * view, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("llama.cpp's logits buffer is read-only")
        view.buf = <void *> self.data
        view.obj = self
        view.len = self.shape[0] * self.shape[1] * sizeof(float)
        view.readonly = 1
        view.itemsize = sizeof(float)
        view.format = "f"
        view.ndim = 2
        view.shape = self.shape
        view.strides = self.strides
        view.suboffsets = NULL
        view.internal = NULL
        self.ctx._users += 1

    def __releasebuffer__(self, Py_buffer * view):
        self.ctx._release_user()


# --------------------------------------------------------------------------- Context


cdef cbool _abort_requested(void * data) noexcept nogil:
    return (<int *> data)[0] != 0 or ld_interrupt_pending()


cdef class Context(_Resource):
    """A llama.cpp inference context (KV memory, compute buffers, one reusable batch).

    Parameters
    ----------
    model: the Model (kept alive by the context).
    n_ctx: KV cache size in tokens (> 0).
    n_batch: most tokens one ``decode`` call accepts (default: min(n_ctx, 2048)).
    n_ubatch: most tokens computed in one pass; non-causal decoding needs
        ``n_tokens <= n_ubatch`` (default: n_batch).
    n_seq_max: number of parallel sequences.
    n_threads: CPU threads (default: ``default_threads()``, the physical cores with one CPU left free).
    causal: causal attention; False gives bidirectional attention over the batch and
        the cached prefix (block diffusion).
    flash_attn: "auto", True or False.
    type_k, type_v: KV cache element types ("f16", "f32", "bf16", "q8_0", "q4_0").
    kv_unified: one KV buffer shared by all sequences (n_seq_max > 1): sequences of different
        lengths then fit in n_ctx together, and one batch may mix them freely.
    diffusion_kv: full-diffusion architectures (LLaDA, Dream, ...) have no KV memory
        upstream; True gives them one (vendor/patches/0004), still non-causal, so the
        prefix / dual caches can keep key-values between steps. Such a context accepts
        decodes that refill positions removed with ``memory_remove``. Ignored for other
        architectures.
    """

    def __cinit__(self):
        self.ptr = NULL
        self.mem = NULL
        self.batch_capacity = 0
        self.n_outputs = 0
        self._abort_flag = 0
        self._rpc_sigint = False
        self.block_causal = 0

    def __init__(self, Model model not None, *, n_ctx=4096, n_batch=None, n_ubatch=None,
                 int n_seq_max=1, n_threads=None, n_threads_batch=None, bint causal=True,
                 flash_attn="auto", str type_k="f16", str type_v="f16", bint offload_kqv=True,
                 bint diffusion_kv=False, bint kv_unified=False):
        if self.ptr != NULL:
            raise RuntimeError("Context is already initialised")
        model._check_open()
        if model.vocab_only:
            raise ValueError("this Model was loaded with vocab_only=True and cannot decode; "
                             "load it without vocab_only")
        n_ctx = _positive_int("n_ctx", n_ctx)
        n_batch = min(n_ctx, 2048) if n_batch is None else _positive_int("n_batch", n_batch)
        n_ubatch = n_batch if n_ubatch is None else _positive_int("n_ubatch", n_ubatch)
        if n_ubatch > n_batch:
            raise ValueError(f"n_ubatch ({n_ubatch}) must not exceed n_batch ({n_batch})")
        if n_seq_max < 1 or n_seq_max > C.llama_max_parallel_sequences():
            raise ValueError(f"n_seq_max must be in 1..{C.llama_max_parallel_sequences()}, got {n_seq_max}")
        n_threads = default_threads() if n_threads is None else _positive_int("n_threads", n_threads)
        n_threads_batch = n_threads if n_threads_batch is None else _positive_int("n_threads_batch", n_threads_batch)
        if type_k not in _KV_TYPES or type_v not in _KV_TYPES:
            raise ValueError(f"type_k/type_v must be one of {sorted(_KV_TYPES)}")

        cdef C.llama_context_params params = C.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_ubatch
        params.n_seq_max = n_seq_max
        params.n_outputs_max_per_seq = 0   # backend sampling: every output row of a sequence
        params.n_threads = n_threads
        params.n_threads_batch = n_threads_batch
        params.flash_attn_type = _flash_attn_type(flash_attn)
        params.type_k = _KV_TYPES[type_k]
        params.type_v = _KV_TYPES[type_v]
        params.offload_kqv = offload_kqv
        params.no_perf = False
        params.abort_callback = _abort_requested
        params.abort_callback_data = &self._abort_flag
        params.diffusion_kv_cache = diffusion_kv and model.is_diffusion
        params.kv_unified = kv_unified

        cdef llama_context * ctx = NULL
        cdef bint rpc = model.uses_rpc
        _take_problems()
        if rpc:
            _rpc_enter()
        try:
            with nogil:
                ctx = C.llama_init_from_model(model.ptr, params)
        finally:
            if rpc and _rpc_leave():
                if ctx != NULL:
                    with nogil:
                        C.llama_free(ctx)
                _raise_interrupt()
        problems = _take_problems()
        _hook_sigint()                # Ctrl-C aborts a running decode (interrupt.h)
        if rpc and rpc_connection_failed():
            if ctx != NULL:
                with nogil:     # frees remote buffers: the RPC thread may need the GIL to log
                    C.llama_free(ctx)
            raise ConnectionError("an RPC server holding this model's layers stopped answering while "
                                  f"the context was created (no progress within rpc_timeout="
                                  f"{model.rpc_timeout:g} s, or the connection was closed or "
                                  "interrupted): " + ("; ".join(problems[-3:]) or "no reason given"))
        if ctx == NULL:
            detail = "; ".join(problems[-4:]) or "llama.cpp gave no reason"
            raise ContextError(f"llama.cpp could not create a context (n_ctx={n_ctx}, "
                               f"n_batch={n_batch}, n_ubatch={n_ubatch}): {detail}")
        self.ptr = ctx
        self.model = model
        model._users += 1
        self.mem = C.llama_get_memory(ctx)
        self.n_vocab = model.n_vocab
        self.n_ctx = C.llama_n_ctx(ctx)
        self.n_batch = C.llama_n_batch(ctx)
        self.n_ubatch = C.llama_n_ubatch(ctx)
        self.n_seq_max = C.llama_n_seq_max(ctx)
        self.kv_unified = kv_unified
        self.batch = C.llama_batch_init(self.n_batch, 0, 1)
        self.batch_capacity = self.n_batch
        if not model.is_diffusion:
            C.llama_set_causal_attn(ctx, causal)

    def __dealloc__(self):
        self._free()

    cdef void _free(self) noexcept:
        cdef llama_context * ptr = self.ptr
        if ptr != NULL:
            self.ptr = NULL
            self.mem = NULL
            if self.model is not None and self.model.uses_rpc:
                with nogil:     # frees remote buffers: the RPC thread may need the GIL to log
                    ld_interrupt_clear()    # a Ctrl-C seen earlier must not cut the free short
                    C.llama_free(ptr)
            else:
                C.llama_free(ptr)
            if self.model is not None:
                self.model._release_user()
        if self.batch_capacity > 0:
            C.llama_batch_free(self.batch)
            self.batch_capacity = 0

    def _is_null(self):
        return self.ptr == NULL

    def __repr__(self):
        if self.closed:
            return "<llamadiff.Context closed>"
        return (f"<llamadiff.Context n_ctx={self.n_ctx} n_batch={self.n_batch} "
                f"n_ubatch={self.n_ubatch} causal={self.causal}>")

    cdef int _check_open(self) except -1:
        if self.ptr == NULL or self._close_requested:
            raise ValueError("the Context is closed")
        return 0

    # -- settings -------------------------------------------------------------------

    @property
    def causal(self):
        self._check_open()
        return bool(C.llama_get_causal_attn(self.ptr))

    @causal.setter
    def causal(self, bint value):
        self._check_open()
        if self.model.is_diffusion and value:
            raise ValueError("diffusion architectures only support non-causal attention")
        C.llama_set_causal_attn(self.ptr, value)

    def set_block_causal(self, int n_block):
        """Block-causal attention (non-causal contexts with a KV cache): a token at position
        p sees the token at position q only when q // n_block <= p // n_block. 0 turns it off.

        Bidirectional inside blocks of ``n_block`` positions, causal across them: what block
        diffusion (SDAR) trains with. Lets one decode prefill many blocks at once.
        """
        self._check_open()
        if n_block < 0:
            raise ValueError(f"n_block must be >= 0, got {n_block}")
        if n_block and self.mem == NULL:
            raise ValueError("block-causal attention needs a KV cache; this architecture has none")
        C.llama_set_block_causal_attn(self.ptr, n_block)
        self.block_causal = n_block

    @property
    def n_threads(self):
        self._check_open()
        return C.llama_n_threads(self.ptr)

    @n_threads.setter
    def n_threads(self, value):
        self._check_open()
        n = _positive_int("n_threads", value)
        C.llama_set_n_threads(self.ptr, n, n)

    @property
    def has_memory(self):
        """False for architectures that recompute everything each call (LLaDA, Dream)."""
        self._check_open()
        return self.mem != NULL

    # -- memory (KV cache) ----------------------------------------------------------------

    def memory_clear(self):
        """Forget every cached token (no-op without KV memory)."""
        self._check_open()
        if self.mem != NULL:
            C.llama_memory_clear(self.mem, False)

    def memory_remove(self, int pos_from, int pos_to=-1, int seq_id=0):
        """Drop cached tokens of ``seq_id`` with positions in [pos_from, pos_to) (-1: to the end)."""
        self._check_open()
        self._check_seq(seq_id)
        if self.mem == NULL:
            return True
        return bool(C.llama_memory_seq_rm(self.mem, seq_id, pos_from, pos_to))

    def memory_pos_max(self, int seq_id=0):
        """Largest cached position of ``seq_id``, -1 when empty."""
        self._check_open()
        self._check_seq(seq_id)
        return -1 if self.mem == NULL else C.llama_memory_seq_pos_max(self.mem, seq_id)

    def memory_pos_min(self, int seq_id=0):
        self._check_open()
        self._check_seq(seq_id)
        return -1 if self.mem == NULL else C.llama_memory_seq_pos_min(self.mem, seq_id)

    def _check_seq(self, int seq_id):
        if seq_id < 0 or seq_id >= self.n_seq_max:
            raise ValueError(f"seq_id {seq_id} is out of range for n_seq_max={self.n_seq_max}")

    # -- decoding -------------------------------------------------------------------------

    cdef int check_batch_size(self, int n_tokens) except -1:
        """Refuse what llama.cpp would GGML_ASSERT on (that would abort the process)."""
        if n_tokens < 1:
            raise ValueError("cannot decode an empty batch")
        if n_tokens > self.n_batch:
            raise ValueError(f"cannot decode {n_tokens} tokens at once: n_batch is {self.n_batch}")
        if n_tokens > self.n_ubatch and not C.llama_get_causal_attn(self.ptr):
            raise ValueError(f"non-causal decoding of {n_tokens} tokens needs n_ubatch >= "
                             f"{n_tokens} (it is {self.n_ubatch})")
        return 0

    cdef int32_t decode_batch(self, int32_t n_tokens) except -32768 nogil:
        """Decode the first ``n_tokens`` entries of ``self.batch`` as filled by the caller.

        No checks: callers validate with ``check_batch_size`` and token ranges first.
        Returns llama_decode's status.
        """
        cdef int32_t rc, i
        cdef int32_t n_out = 0
        self.batch.n_tokens = n_tokens
        for i in range(n_tokens):
            n_out += self.batch.logits[i] != 0
        if self.mem == NULL:
            # without memory llama_decode runs llama_encode, which outputs every row
            n_out = n_tokens
        self._abort_flag = 0
        ld_interrupt_clear()            # from now on Ctrl-C cuts this decode short (interrupt.h)
        rc = C.llama_decode(self.ptr, self.batch)
        if self.model.uses_rpc:
            # wait here for the servers' answers (llama_decode may return before them, and
            # llama_get_logits would wait, often holding the GIL): Ctrl-C interrupts this wait
            # (vendor/patches/0006), and raise_for_decode sees a connection lost meanwhile
            C.llama_synchronize(self.ptr)
            self._rpc_sigint = _rpc_leave()
        self.n_outputs = n_out if rc == 0 else 0
        self.logits_stayed = (self.logits_on_device and rc == 0 and n_out > 0
                              and C.llama_get_logits_tensor(self.ptr) != NULL)
        self._stage_valid = False
        return rc

    cdef int raise_for_decode(self, int32_t rc, int n_tokens) except -1:
        cdef bint interrupted, failed
        if self.model.uses_rpc:
            interrupted = self._rpc_sigint
            self._rpc_sigint = False
            failed = rpc_connection_failed()
            if failed:
                self.n_outputs = 0      # the rows are zeros, not logits
            if interrupted:
                _raise_interrupt()      # Ctrl-C while waiting on a server
            if failed:
                problems = _take_problems()
                why = ("interrupted (SIGINT)" if interrupted else
                       f"no progress within rpc_timeout={self.model.rpc_timeout:g} s, or the "
                       "connection was closed")
                detail = ("; llama.cpp: " + "; ".join(problems[-2:])) if problems else ""
                raise ConnectionError("an RPC server holding this model's layers stopped answering "
                                      f"({why}); this process can no longer use RPC servers "
                                      f"(see llamadiff.rpc){detail}")
        else:
            PyErr_CheckSignals()    # Ctrl-C during the decode (which it cut short): KeyboardInterrupt
            if rc == 2 and ld_interrupt_pending():
                _raise_interrupt()      # our hook cut it short
        if rc == 0:
            return 0
        problems = _take_problems()
        detail = ("; llama.cpp: " + "; ".join(problems[-3:])) if problems else ""
        if rc == 1:
            raise DecodeError(f"no room in the KV cache for {n_tokens} tokens (n_ctx={self.n_ctx}); "
                              f"clear or shrink the cached sequence, or use a larger n_ctx{detail}")
        if rc == 2:
            raise DecodeAborted("decoding was aborted" + detail)
        if rc == -1:
            raise DecodeError("llama.cpp rejected the batch as invalid" + detail)
        raise DecodeError(f"llama_decode failed with status {rc}{detail}")

    cdef float * logits_row(self, int32_t i) noexcept nogil:
        """Logits of the i-th output row of the last decode (no bounds check; host memory), or
        NULL when they cannot be read (``step_logits`` would raise: call it for the reason)."""
        cdef int device = -1
        cdef const float * rows
        with gil:
            try:
                rows = self.step_logits(False, &device)
            except Exception:
                return NULL
        if rows == NULL:
            return NULL
        return <float *> rows + <Py_ssize_t> i * self.n_vocab

    # -- logits where they were computed (vendor/patches/0008) ------------------------------

    @property
    def keep_logits_on_device(self):
        """True: decodes leave the logits in the output layer's buffer (no copy to llama.cpp's
        host buffer, vendor/patches/0008); ``logits`` still reads them (copying them from a
        GPU). ``logits_stayed`` says whether the last decode did."""
        return self.logits_on_device

    @keep_logits_on_device.setter
    def keep_logits_on_device(self, bint on):
        self._check_open()
        self.set_logits_on_device(on)

    cdef int set_logits_on_device(self, bint on) noexcept nogil:
        """From the next decode on, leave the logits in the output layer's buffer (no copy to
        llama.cpp's host buffer) when ``on``; ``step_logits`` finds them either way."""
        if on != self.logits_on_device and self.ptr != NULL:
            C.llama_set_logits_on_device(self.ptr, on)
            self.logits_on_device = on
        return 0

    cdef const float * step_logits(self, bint device_ok, int * device) except? NULL nogil:
        """The last decode's logits rows (n_outputs x n_vocab, batch order) and where they are:
        ``device[0]`` = -1 for memory the host can read (llama.cpp's host buffer, or the CPU
        back end's own buffer), k >= 0 for memory of CUDA device k (only when ``device_ok``).
        Rows on any other device are copied to a host buffer of this context first."""
        cdef C.ggml_tensor * t
        cdef const char * name
        cdef int k
        device[0] = -1
        if not self.logits_stayed:
            return C.llama_get_logits(self.ptr)      # copied to the host as usual (see the patch)
        t = C.llama_get_logits_tensor(self.ptr)
        if (t.type != C.GGML_TYPE_F32 or not C.ggml_is_contiguous(t) or t.ne[0] != self.n_vocab
                or t.ne[1] != self.n_outputs or t.data == NULL):
            with gil:
                raise DecodeError(f"llama.cpp left logits of an unexpected shape on the device "
                                  f"([{t.ne[0]}, {t.ne[1]}], type {<int> t.type}; expected "
                                  f"[{self.n_vocab}, {self.n_outputs}] F32)")
        if t.buffer == NULL or C.ggml_backend_buffer_is_host(t.buffer):
            return <const float *> t.data
        if device_ok:
            name = C.ggml_backend_dev_name(C.ggml_backend_buft_get_device(
                C.ggml_backend_buffer_get_type(t.buffer)))
            k = _cuda_index(name)
            if k >= 0:
                device[0] = k
                return <const float *> t.data
        # another kind of device (Vulkan, RPC, ...) or a reader of host memory: copy the rows,
        # once per decode
        if not self._stage_valid:
            self._logits_stage.resize(<size_t> self.n_outputs * self.n_vocab)
            C.ggml_backend_tensor_get(t, self._logits_stage.data(), 0, C.ggml_nbytes(t))
            self._stage_valid = True
        return self._logits_stage.data()

    def decode(self, tokens, positions=None, *, logits=True, int seq_id=0):
        """Run the model over ``tokens`` at ``positions`` and keep their KV in memory.

        tokens: token ids. positions: one per token (default: continue after the last
            cached position of the sequence). logits: True (a row for every token),
            False (none), "last", or one bool per token.
        Releases the GIL while llama.cpp computes. Afterwards ``self.logits`` holds one
        row per requested token, in batch order.
        """
        self._check_open()
        self._check_seq(seq_id)
        cdef Py_ssize_t n = len(tokens)
        self.check_batch_size(n)
        if positions is None:
            start = self.memory_pos_max(seq_id) + 1
            positions = range(start, start + n)
        elif len(positions) != n:
            raise ValueError(f"got {len(positions)} positions for {n} tokens")
        if isinstance(logits, str):
            if logits != "last":
                raise ValueError("logits must be True, False, 'last' or a sequence of bools")
            flags = [False] * (n - 1) + [True]
        elif isinstance(logits, bool) or logits is None:
            flags = [bool(logits)] * n
        else:
            flags = [bool(f) for f in logits]
            if len(flags) != n:
                raise ValueError(f"got {len(flags)} logits flags for {n} tokens")

        cdef int32_t i, rc
        cdef long tok, pos
        for i in range(n):
            tok = tokens[i]
            pos = positions[i]
            self.model._check_token(tok)
            if pos < 0 or pos >= self.n_ctx:
                raise ValueError(f"position {pos} is outside the context (n_ctx={self.n_ctx})")
            self.batch.token[i] = <llama_token> tok
            self.batch.pos[i] = <llama_pos> pos
            self.batch.n_seq_id[i] = 1
            self.batch.seq_id[i][0] = seq_id
            self.batch.logits[i] = flags[i]
        _take_problems()
        with nogil:
            rc = self.decode_batch(<int32_t> n)
        self.raise_for_decode(rc, n)
        return self.n_outputs

    @property
    def logits(self):
        """Logits of the last decode as a read-only float32 array (n_outputs, n_vocab).

        Shares llama.cpp's buffer (no copy): valid until the next ``decode`` on this
        context; copy it (``.copy()``) to keep it longer.
        """
        self._check_open()
        if self.n_outputs == 0:
            return np.empty((0, self.n_vocab), dtype=np.float32)
        cdef _LogitsBuffer buf = _LogitsBuffer.__new__(_LogitsBuffer)
        cdef int device = -1
        buf.ctx = self
        buf.data = <float *> self.step_logits(False, &device)
        buf.shape[0] = self.n_outputs
        buf.shape[1] = self.n_vocab
        buf.strides[0] = self.n_vocab * sizeof(float)
        buf.strides[1] = sizeof(float)
        return np.asarray(buf)

    def request_abort(self):
        """Ask a decode running in another thread to stop (CPU backend); it raises DecodeAborted."""
        self._abort_flag = 1

    # -- performance counters --------------------------------------------------------------

    def perf(self):
        """llama.cpp's own timing counters for this context."""
        self._check_open()
        cdef C.llama_perf_context_data d = C.llama_perf_context(self.ptr)
        return {"load_ms": d.t_load_ms, "prompt_eval_ms": d.t_p_eval_ms, "eval_ms": d.t_eval_ms,
                "n_prompt_eval": d.n_p_eval, "n_eval": d.n_eval, "graphs_reused": d.n_reused}

    def perf_reset(self):
        self._check_open()
        C.llama_perf_context_reset(self.ptr)


cdef int _cuda_index(const char * name) noexcept nogil:
    """k for a ggml device named "CUDA<k>", else -1."""
    cdef char * end = NULL
    cdef long k
    if name == NULL or strncmp(name, b"CUDA", 4) != 0 or name[4] == 0:
        return -1
    k = strtol(name + 4, &end, 10)
    if end == NULL or end[0] != 0 or k < 0 or k > 1024:
        return -1
    return <int> k


cdef object _optional_token(llama_token tok):
    return None if tok < 0 else int(tok)


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if value > 0x7FFFFFFF:
        raise ValueError(f"{name} is too large: {value}")
    return int(value)


def _flash_attn_type(value):
    if value == "auto" or value is None:
        return C.LLAMA_FLASH_ATTN_TYPE_AUTO
    if value is True or value == "on":
        return C.LLAMA_FLASH_ATTN_TYPE_ENABLED
    if value is False or value == "off":
        return C.LLAMA_FLASH_ATTN_TYPE_DISABLED
    raise ValueError(f"flash_attn must be 'auto', True or False, got {value!r}")

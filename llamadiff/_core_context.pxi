# _core_context.pxi: included by _core.pyx (one extension module: llamadiff._core).
# Context: KV memory, decodes, logits where llama.cpp left them.

_KV_TYPES = {
    "f32": C.GGML_TYPE_F32, "f16": C.GGML_TYPE_F16, "bf16": C.GGML_TYPE_BF16,
    "q8_0": C.GGML_TYPE_Q8_0, "q4_0": C.GGML_TYPE_Q4_0,
}


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

        _hook_sigint()                # Ctrl-C aborts a running decode (interrupt.h)
        cdef _ContextInit init
        init.model = model.ptr
        init.params = params
        problems = []
        cdef llama_context * ctx = <llama_context *> _create_native(
            _init_context, &init, _free_context, model.uses_rpc,
            "an RPC server holding this model's layers stopped answering while the context was created",
            model.rpc_timeout, problems)
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
        if self.sc_pending:
            C.llama_set_self_conditioning(self.ptr, self.sc_embd.data(), n_tokens, self.sc_inv_temp.data(), n_out)
            self.sc_pending = False
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
        if not self.logits_stayed:          # llama.cpp's host buffer: no GIL, no checks
            rows = C.llama_get_logits(self.ptr)
            if rows == NULL:
                return NULL
            return <float *> rows + <Py_ssize_t> i * self.n_vocab
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

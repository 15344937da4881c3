# _core_model.pxi: included by _core.pyx (one extension module: llamadiff._core).
# Model: a loaded GGUF, its metadata, facts about its body, its vocabulary and chat templates.

# Pieces that stand for the mask token in the diffusion model families we know
# (SDAR / TraDo, Dream, LLaDA), tried when the GGUF does not name a mask token id.
MASK_TOKEN_TEXTS = ("<|MASK|>", "<|mask|>", "<|mdm_mask|>", "[MASK]")

_ROPE_TYPES = {C.LLAMA_ROPE_TYPE_NONE: "none", C.LLAMA_ROPE_TYPE_NORM: "norm", C.LLAMA_ROPE_TYPE_NEOX: "neox",
               C.LLAMA_ROPE_TYPE_MROPE: "mrope", C.LLAMA_ROPE_TYPE_IMROPE: "imrope",
               C.LLAMA_ROPE_TYPE_VISION: "vision"}


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
            vocab_check.check(self.path, header[0], read_gguf_strings)
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
        if endpoints is not None:
            # the model's layers go to these servers only (connecting waits on them: Ctrl-C
            # interrupts those waits too; the load below stays in the same wait window)
            _take_problems()
            _rpc_enter()
            try:
                for endpoint in endpoints:
                    _add_rpc_devices(endpoint, devices, self.rpc_timeout)
            except BaseException:
                if _rpc_leave():
                    _raise_interrupt()
                raise
            devices.push_back(NULL)
            params.devices = devices.data()
            if n_gpu_layers == 0:
                params.n_gpu_layers = -1
        cdef _ModelLoad load
        load.path = cpath
        load.params = params
        problems = []
        model = <llama_model *> _create_native(_load_model, &load, _free_model, endpoints is not None,
                                               f"lost the connection to an RPC server while loading {self.path!r}",
                                               self.rpc_timeout, problems, entered=endpoints is not None)
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
        ``None`` for other models. (The rules: ``llamadiff.bodies``.)"""
        self._check_open()
        return _bodies.family_of(self)

    @property
    def block_diffusion_problem(self):
        """Why block diffusion cannot run on this model's body (a phrase), or None when it can
        (``llamadiff.bodies.block_diffusion_problem``)."""
        self._check_open()
        return _bodies.block_diffusion_problem(self)

    # facts about the body, for those rules

    @property
    def has_encoder(self):
        self._check_open()
        return bool(C.llama_model_has_encoder(self.ptr))

    @property
    def is_recurrent(self):
        """Its layers keep a running state instead of a KV cache (Mamba, RWKV...)."""
        self._check_open()
        return bool(C.llama_model_is_recurrent(self.ptr))

    @property
    def is_hybrid(self):
        """Recurrent layers beside attention layers."""
        self._check_open()
        return bool(C.llama_model_is_hybrid(self.ptr))

    @property
    def n_swa(self):
        """The sliding attention window (0: none)."""
        self._check_open()
        return int(C.llama_model_n_swa(self.ptr))

    @property
    def rope_type(self):
        """The RoPE kind: "none", "norm", "neox", "mrope", "imrope" or "vision"."""
        self._check_open()
        return _ROPE_TYPES.get(<int> C.llama_model_rope_type(self.ptr), "unknown")

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
_chat._register_builtin_templates(chat_builtin_templates)


cdef object _optional_token(llama_token tok):
    return None if tok < 0 else int(tok)

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""The "backend" sampling route: greedy x0, p(x0) and entropy computed inside llama.cpp's
graph (llama.cpp's experimental backend-sampling API), so the logits never reach the host.

A ``BackendRowSampler`` is attached to a ``Context`` (sequence 0); from then on every decode
of that context with output rows also runs the sampling ops on the device of the output
layer, and ``sample()`` only reads the per-row results. See ``_backend_sampler.h``.
Greedy only: temperature > 0, top-k and top-p raise ``ValueError``.
"""

from libc.math cimport NAN
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

cimport llamadiff.llama as C
from llamadiff._core cimport Context
from llamadiff._sampling cimport SamplingParams, RowResult, RowSampler
from llamadiff._backend_sampler cimport ld_bs_chain_new


cdef class BackendRowSampler(RowSampler):
    """Greedy row statistics from llama.cpp's graph (``Generator(sampler="backend")``).

    ``attach(ctx)`` installs the sampler on a context; one sampler serves one context at a
    time (attaching to another detaches it from the first). ``margin`` is not computed on
    this route (NaN).
    """
    cdef C.llama_sampler * chain
    cdef Context ctx
    cdef readonly int mask_id

    def __init__(self, int mask_id):
        RowSampler.__init__(self)
        self.uses_host_logits = False
        self.mask_id = mask_id
        self.chain = ld_bs_chain_new(mask_id)
        if self.chain == NULL:
            raise MemoryError("could not create the backend sampler")

    @property
    def name(self):
        return "backend"

    @property
    def context(self):
        return self.ctx

    def attach(self, Context ctx not None):
        """Sample on ``ctx`` (its decodes then return no host logits for sequence 0)."""
        if ctx is self.ctx and not ctx.closed:
            return
        self.detach()
        ctx._check_open()
        if not C.llama_set_sampler(ctx.ptr, 0, self.chain):
            raise RuntimeError("llama.cpp refused the backend sampler for this context "
                               "(an operation is not supported by the output device)")
        self.ctx = ctx

    def detach(self):
        if self.ctx is not None and not self.ctx.closed:
            C.llama_set_sampler(self.ctx.ptr, 0, NULL)
        self.ctx = None

    def __dealloc__(self):
        if self.ctx is not None and not self.ctx.closed:
            C.llama_set_sampler(self.ctx.ptr, 0, NULL)
        self.ctx = None
        if self.chain != NULL:
            C.llama_sampler_free(self.chain)
            self.chain = NULL

    cdef int reserve(self, int n_rows, int64_t n_vocab, const SamplingParams * sp) except -1:
        if sp.temperature > 0 or (0 < sp.top_k < n_vocab) or sp.top_p < 1.0:
            raise ValueError("sampler='backend' computes greedy decoding only (temperature 0, "
                             "no top_k / top_p); use sampler='cpu' or 'cuda' to sample")
        if sp.skip_token != self.mask_id:
            raise ValueError(f"this backend sampler excludes token {self.mask_id}, "
                             f"not {sp.skip_token}")
        if self.ctx is None or self.ctx.closed:
            raise RuntimeError("the backend sampler is not attached to a context")
        return 0

    cdef int sample(self, const float * logits, int64_t n_vocab, int n_rows, const SamplingParams * sp,
                    const uint64_t * counters, RowResult * out) except -1 nogil:
        """Read the rows of the last decode (the last n_rows outputs, in output order)."""
        cdef int r
        cdef float * stats
        cdef C.llama_context * ptr = self.ctx.ptr
        for r in range(n_rows):
            out[r].token = C.llama_get_sampled_token_ith(ptr, r - n_rows)
            stats = C.llama_get_sampled_probs_ith(ptr, r - n_rows)
            if out[r].token < 0 or stats == NULL or C.llama_get_sampled_probs_count_ith(ptr, r - n_rows) < 2:
                with gil:
                    raise RuntimeError(f"llama.cpp returned no backend-sampled result for output row {r}")
            out[r].prob = stats[0]
            out[r].entropy = stats[1]
            out[r].margin = NAN
        return 0

    def read_rows(self, int n_rows):
        """(tokens, probs, entropies) of the last n_rows outputs of the attached context's last
        decode (tests, tools)."""
        import numpy as np
        if self.ctx is None or self.ctx.closed:
            raise RuntimeError("the backend sampler is not attached to a context")
        if not 0 < n_rows <= self.ctx.n_outputs:
            raise ValueError(f"n_rows must be in 1..{self.ctx.n_outputs}")
        tokens = np.empty(n_rows, dtype=np.int32)
        probs = np.empty(n_rows, dtype=np.float32)
        ents = np.empty(n_rows, dtype=np.float32)
        cdef int r
        cdef C.llama_context * ptr = self.ctx.ptr
        cdef float * stats
        for r in range(n_rows):
            tokens[r] = C.llama_get_sampled_token_ith(ptr, r - n_rows)
            stats = C.llama_get_sampled_probs_ith(ptr, r - n_rows)
            if tokens[r] < 0 or stats == NULL:
                raise RuntimeError(f"llama.cpp returned no backend-sampled result for output row {r}")
            probs[r] = stats[0]
            ents[r] = stats[1]
        return tokens, probs, ents

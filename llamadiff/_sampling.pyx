# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""Per-row CPU sampling kernels.

For each masked position the block loop needs x0 (the sampled or argmax token), its
probability p(x0) and the entropy of the distribution it was drawn from. The fast path
(no top-k / top-p) makes two vectorised passes over the row (max, then exp-sums); top-k /
top-p work on a candidate list selected with ``nth_element``. Draws use inverse-CDF
sampling with a counter-based RNG: a row's draw depends only on (seed, counter), never
on which thread computed it.

The mask token is excluded from every distribution (it is never a prediction).
"""

from cython.parallel cimport prange
from libc.math cimport fmaf, log, logf, isnan
from libc.stdint cimport int32_t, int64_t, uint64_t
from libcpp.algorithm cimport nth_element, sort

import numpy as np


from llamadiff._kernels cimport (ld_expf, ld_range_max, ld_row_argmax, ld_row_softmax_stats,
                                  ld_row_draw, ld_uniform)


# RowResult as float32 words (int32 token, then floats): what a row's sampling returns
RESULT_FLOATS = sizeof(RowResult) // sizeof(float)

# Rows per step times vocabulary below which threads cost more than they save.
cdef int64_t PARALLEL_MIN_WORK = 1 << 16


cdef inline bint _greater(const Candidate & a, const Candidate & b) noexcept nogil:
    # descending logit; ties: lower token id first (deterministic, like a stable argmax)
    return a.logit > b.logit or (a.logit == b.logit and a.token < b.token)


cdef int64_t _top_candidates(const float * row, int64_t n_vocab, int32_t skip, int64_t k,
                             Candidate * scratch) noexcept nogil:
    """Fill scratch with the k best (logit, token) pairs, sorted descending; return their count."""
    cdef int64_t i, n = 0
    for i in range(n_vocab):
        if i != skip and not isnan(row[i]):
            scratch[n].logit = row[i]
            scratch[n].token = <int32_t> i
            n += 1
    if k > n:
        k = n
    if k < n:
        nth_element(scratch, scratch + k, scratch + n, _greater)
    sort(scratch, scratch + k, _greater)
    return k


cdef void _sample_filtered(const float * row, int64_t n_vocab, const SamplingParams * sp,
                           uint64_t counter, Candidate * scratch, RowResult * out) noexcept nogil:
    """Top-k then top-p (as SDAR's sampler applies them), then a draw or the argmax."""
    cdef float s = 1.0 / sp.temperature if sp.temperature > 0 else 1.0
    cdef int64_t k = sp.top_k if 0 < sp.top_k < n_vocab else n_vocab
    cdef int64_t want, n, i, kept, arg
    cdef double z, cum, w, target, h
    cdef float m
    if sp.top_p >= 1.0:
        kept = _top_candidates(row, n_vocab, sp.skip_token, k, scratch)
    else:
        if k < n_vocab:
            # top-k first: the candidates are few, sort them all
            n = _top_candidates(row, n_vocab, sp.skip_token, k, scratch)
            m = scratch[0].logit
            z = 0.0
            for i in range(n):
                z += ld_expf(s * (scratch[i].logit - m))
        else:
            # top-p alone: grow a sorted prefix until it covers top_p of the whole mass
            ld_row_argmax(row, n_vocab, sp.skip_token, &m, &arg)
            ld_row_softmax_stats(row, n_vocab, sp.skip_token, m, s, &z, &h)
            want = 256
            while True:
                n = _top_candidates(row, n_vocab, sp.skip_token, want, scratch)
                cum = 0.0
                for i in range(n):
                    cum += ld_expf(s * (scratch[i].logit - m))
                if cum >= sp.top_p * z or n < want or want >= n_vocab:
                    break
                want = want * 8
        cum = 0.0
        kept = 0
        for i in range(n):
            if cum >= sp.top_p * z:   # keep while the mass before this token is < top_p
                break
            cum += ld_expf(s * (scratch[i].logit - m))
            kept += 1
    if kept < 1:
        kept = 1
    m = scratch[0].logit
    z = 0.0
    h = 0.0
    for i in range(kept):
        w = ld_expf(s * (scratch[i].logit - m))
        z += w
        if w > 0:
            h += w * s * (scratch[i].logit - m)
    cdef int64_t pick = 0
    if sp.temperature > 0:
        target = ld_uniform(sp.seed, counter, 0) * z
        cum = 0.0
        pick = kept - 1
        for i in range(kept):
            cum += ld_expf(s * (scratch[i].logit - m))
            if cum > target:
                pick = i
                break
    out.token = scratch[pick].token
    out.prob = <float> (ld_expf(s * (scratch[pick].logit - m)) / z)
    out.entropy = <float> (log(z) - h / z)
    w = ld_expf(s * (scratch[1].logit - m)) if kept >= 2 else 0.0
    out.margin = <float> ((1.0 - w) / z)
    if sp.plain_prob:
        out.plain_prob = _plain_prob(row, n_vocab, sp.skip_token, out.token)


cdef inline float _second_max(const float * row, int64_t n, int64_t skip, int64_t arg) noexcept nogil:
    """Largest value of row outside indices arg and skip (-inf if none): the runner-up."""
    cdef int64_t a = arg, b = skip
    if b < 0 or b >= n or b == a:
        b = a
    if a > b:
        a, b = b, a
    cdef float best = ld_range_max(row, 0, a)
    if b > a:
        best = max(best, ld_range_max(row, a + 1, b))
    return max(best, ld_range_max(row, b + 1, n))


cdef void sample_row(const float * row, int64_t n_vocab, const SamplingParams * sp,
                     uint64_t counter, Candidate * scratch, RowResult * out) noexcept nogil:
    """x0, p(x0), entropy and margin for one row of logits."""
    if (0 < sp.top_k < n_vocab) or sp.top_p < 1.0:
        _sample_filtered(row, n_vocab, sp, counter, scratch, out)
        return
    cdef float m
    cdef int64_t arg, pick
    cdef double z, e
    cdef float s = 1.0 / sp.temperature if sp.temperature > 0 else 1.0
    ld_row_argmax(row, n_vocab, sp.skip_token, &m, &arg)
    ld_row_softmax_stats(row, n_vocab, sp.skip_token, m, s, &z, &e)
    pick = arg
    if sp.temperature > 0:
        pick = ld_row_draw(row, n_vocab, sp.skip_token, m, s,
                           ld_uniform(sp.seed, counter, 0) * z, arg)
    out.token = <int32_t> pick
    out.prob = <float> (ld_expf(s * (row[pick] - m)) / z)
    out.entropy = <float> (log(z) - e / z)
    out.margin = <float> ((1.0 - ld_expf(s * (_second_max(row, n_vocab, sp.skip_token, arg) - m))) / z)
    if sp.plain_prob:
        out.plain_prob = _plain_prob(row, n_vocab, sp.skip_token, pick)


cdef float _plain_prob(const float * row, int64_t n_vocab, int32_t skip, int64_t token) noexcept nogil:
    """p(token) under the plain softmax of the row (temperature 1, the mask token left out)."""
    cdef float m
    cdef int64_t arg
    cdef double z, e
    ld_row_argmax(row, n_vocab, skip, &m, &arg)
    ld_row_softmax_stats(row, n_vocab, skip, m, 1.0, &z, &e)
    return <float> (ld_expf(row[token] - m) / z)


cdef void sample_rows(const float * logits, int64_t n_vocab, int n_rows, const SamplingParams * sp,
                      const uint64_t * counters, Candidate * scratch, RowResult * out,
                      int n_threads) noexcept nogil:
    """sample_row for each of n_rows contiguous rows; threads when the work is large.

    scratch must hold n_rows * n_vocab candidates when top-k / top-p is on.
    """
    cdef int r
    cdef bint filtered = (0 < sp.top_k < n_vocab) or sp.top_p < 1.0
    cdef int64_t work = n_vocab * n_rows * (8 if filtered else 1)
    if n_threads > 1 and n_rows > 1 and work >= PARALLEL_MIN_WORK:
        for r in prange(n_rows, nogil=True, num_threads=min(n_threads, n_rows), schedule="static"):
            sample_row(logits + r * n_vocab, n_vocab, sp, counters[r],
                       scratch + r * n_vocab, out + r)
    else:
        for r in range(n_rows):
            sample_row(logits + r * n_vocab, n_vocab, sp, counters[r],
                       scratch + r * n_vocab, out + r)


def sample_logits(logits, *, float temperature=0.0, int top_k=0, float top_p=1.0,
                  unsigned long long seed=0, int skip_token=-1, counters=None, int n_threads=1,
                  bint with_margin=False):
    """Python entry point to the row sampler (tests, tools): returns (tokens, probs, entropies),
    and the margins too with ``with_margin=True``.

    ``logits``: float32 array (rows, n_vocab). ``counters``: one RNG counter per row
    (default: the row index).
    """
    result = CpuRowSampler(n_threads).sample_logits(
        logits, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        skip_token=skip_token, counters=counters)
    return result if with_margin else result[:3]


cdef int check_rows(const RowResult * rows, int n_rows) except -1 nogil:
    """Every sampler route yields p(x0) = NaN for a row with a NaN or infinite logit (the
    log-sum-exp propagates it), so one pass over the results catches broken logits -- from
    NaN rope parameters, broken weights or a failing backend -- before a token is committed."""
    cdef int i
    for i in range(n_rows):
        if isnan(rows[i].prob) or not (rows[i].prob >= 0.0):
            _raise_non_finite()
    return 0


cdef int check_logits(const float * row, int64_t n) except -1 nogil:
    """The same check on a raw logits row (for loops that sample with llama.cpp's samplers)."""
    cdef int64_t j
    cdef float acc = 0.0
    for j in range(n):
        acc += row[j] * 0.0          # NaN for a NaN or infinite logit, 0 otherwise
    if acc != 0.0:
        _raise_non_finite()
    return 0


cdef int _raise_non_finite() except -1 nogil:
    with gil:
        from llamadiff.errors import DecodeError
        raise DecodeError(
            "the model produced non-finite logits (NaN or inf); nothing was committed. "
            "Its weights or hyper-parameters (rope frequency base or scaling, norm epsilon) "
            "are broken, or the backend failed")


cdef class RowSampler:
    """The sampler interface (abstract; see _sampling.pxd)."""

    def __init__(self):
        self.uses_host_logits = True

    @property
    def name(self):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"

    cdef int reserve(self, int n_rows, int64_t n_vocab, const SamplingParams * sp) except -1:
        """Make room for n_rows rows (no allocation in sample() afterwards)."""
        return 0

    cdef int sample(self, const float * logits, int64_t n_vocab, int n_rows, const SamplingParams * sp,
                    const uint64_t * counters, RowResult * out) except -1 nogil:
        with gil:
            raise NotImplementedError(f"{type(self).__name__}.sample")

    cdef int sample_device(self, const float * logits, int device, int64_t n_vocab, int n_rows,
                           const SamplingParams * sp, const uint64_t * counters,
                           RowResult * out) except -1 nogil:
        with gil:
            raise NotImplementedError(f"the {self.name!r} sampler cannot read rows in device memory")

    cdef int sample_guided(self, const float * logits, int device, int64_t n_vocab, int n_rows,
                           float scale, const SamplingParams * sp, const uint64_t * counters,
                           RowResult * out) except -1 nogil:
        """Host rows: the guided rows into a scratch buffer, then ``sample``."""
        cdef int i
        cdef int64_t j
        cdef float * row
        cdef const float * cond
        cdef const float * unc
        if device >= 0:
            with gil:
                raise NotImplementedError(f"the {self.name!r} sampler cannot guide rows in device memory")
        if self.guided_rows.size() < <size_t> n_rows * <size_t> n_vocab:
            with gil:
                self.guided_rows.resize(<size_t> n_rows * <size_t> n_vocab)
        for i in range(n_rows):
            row = self.guided_rows.data() + <size_t> i * n_vocab
            cond = logits + <size_t> i * n_vocab
            unc = logits + <size_t> (n_rows + i) * n_vocab
            for j in range(n_vocab):
                # one fused multiply-add, written out: the same rounding on every compiler and
                # in the GPU's kernel (sampler.cu), whether or not the compiler contracts
                row[j] = fmaf(scale, cond[j] - unc[j], unc[j])
        return self.sample(self.guided_rows.data(), n_vocab, n_rows, sp, counters, out)

    def sample_logits(self, logits, *, float temperature=0.0, int top_k=0, float top_p=1.0,
                      unsigned long long seed=0, int skip_token=-1, counters=None):
        """Sample a (rows, n_vocab) float32 array: returns (tokens, probs, entropies, margins).

        ``counters``: one RNG counter per row (default: the row index).
        """
        if not self.uses_host_logits:
            raise NotImplementedError(f"the {self.name!r} sampler reads its rows from a context's decode, "
                                      "not from an array")
        return _sample_array(self, logits, temperature, top_k, top_p, seed, skip_token, counters)


cdef class CpuRowSampler(RowSampler):
    """CPU row sampler: ``sample_rows`` with its scratch space and thread count."""

    def __init__(self, int n_threads=1, *, bint in_place=False):
        RowSampler.__init__(self)
        if n_threads < 1:
            raise ValueError("n_threads must be >= 1")
        self.n_threads = n_threads
        self.in_place = in_place
        self.gives_plain_prob = True

    @property
    def name(self):
        return "device" if self.in_place else "cpu"

    cdef int reserve(self, int n_rows, int64_t n_vocab, const SamplingParams * sp) except -1:
        if ((0 < sp.top_k < n_vocab) or sp.top_p < 1.0) and \
                self.scratch.size() < <size_t> n_rows * <size_t> n_vocab:
            self.scratch.resize(<size_t> n_rows * <size_t> n_vocab)
        return 0

    cdef int sample(self, const float * logits, int64_t n_vocab, int n_rows, const SamplingParams * sp,
                    const uint64_t * counters, RowResult * out) except -1 nogil:
        if ((0 < sp.top_k < n_vocab) or sp.top_p < 1.0) and \
                self.scratch.size() < <size_t> n_rows * <size_t> n_vocab:
            with gil:
                self.reserve(n_rows, n_vocab, sp)
        sample_rows(logits, n_vocab, n_rows, sp, counters, self.scratch.data(), out, self.n_threads)
        return 0


cdef _sample_array(RowSampler sampler, logits, float temperature, int top_k, float top_p,
                   unsigned long long seed, int skip_token, counters):
    cdef const float[:, ::1] view = np.ascontiguousarray(logits, dtype=np.float32)
    cdef int n_rows = view.shape[0]
    cdef int64_t n_vocab = view.shape[1]
    if n_vocab < 1 or n_rows < 1:
        raise ValueError("logits must be a non-empty 2-D array")
    if temperature < 0 or not (0.0 < top_p <= 1.0) or top_k < 0:
        raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0")
    cdef uint64_t[::1] ctr = (np.arange(n_rows, dtype=np.uint64) if counters is None
                              else np.ascontiguousarray(counters, dtype=np.uint64))
    if ctr.shape[0] != n_rows:
        raise ValueError("need one counter per row")
    cdef SamplingParams sp
    sp.temperature = temperature
    sp.top_k = top_k
    sp.top_p = top_p
    sp.seed = seed
    sp.skip_token = skip_token
    sp.plain_prob = 0
    sampler.reserve(n_rows, n_vocab, &sp)
    out = np.empty(n_rows * RESULT_FLOATS, dtype=np.float32)
    cdef float[::1] out_view = out
    with nogil:
        sampler.sample(&view[0, 0], n_vocab, n_rows, &sp, &ctr[0], <RowResult *> &out_view[0])
    res = out.reshape(n_rows, RESULT_FLOATS)
    tokens = res[:, 0].view(np.int32).copy()
    return tokens, res[:, 1].copy(), res[:, 2].copy(), res[:, 3].copy()

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
from libc.math cimport log, logf, isnan
from libc.stdint cimport int32_t, int64_t, uint64_t
from libcpp.algorithm cimport nth_element, sort

import numpy as np


cdef extern from "_kernels.h" nogil:
    float ld_expf(float x)
    void ld_row_argmax(const float * row, int64_t n, int64_t skip, float * max_out, int64_t * arg_out)
    void ld_row_softmax_stats(const float * row, int64_t n, int64_t skip, float m, float s,
                              double * z_out, double * e_out)
    int64_t ld_row_draw(const float * row, int64_t n, int64_t skip, float m, float s,
                        double target, int64_t fallback)
    double ld_uniform(uint64_t seed, uint64_t a, uint64_t b)


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


cdef void sample_row(const float * row, int64_t n_vocab, const SamplingParams * sp,
                     uint64_t counter, Candidate * scratch, RowResult * out) noexcept nogil:
    """x0, p(x0) and entropy for one row of logits."""
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
                  unsigned long long seed=0, int skip_token=-1, counters=None, int n_threads=1):
    """Python entry point to the row sampler (tests, tools): returns (tokens, probs, entropies).

    ``logits``: float32 array (rows, n_vocab). ``counters``: one RNG counter per row
    (default: the row index).
    """
    cdef float[:, ::1] view = np.ascontiguousarray(logits, dtype=np.float32)
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
    scratch = np.empty(n_rows * n_vocab * 2, dtype=np.int32)   # Candidate = 8 bytes
    cdef int32_t[::1] scratch_view = scratch
    out = np.empty(n_rows * 3, dtype=np.float32)              # RowResult = 12 bytes
    cdef float[::1] out_view = out
    with nogil:
        sample_rows(&view[0, 0], n_vocab, n_rows, &sp, &ctr[0],
                    <Candidate *> &scratch_view[0], <RowResult *> &out_view[0], n_threads)
    res = out.reshape(n_rows, 3)
    tokens = res[:, 0].view(np.int32).copy()
    return tokens, res[:, 1].copy(), res[:, 2].copy()

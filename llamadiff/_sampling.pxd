# cython: language_level=3
"""Per-row CPU sampling kernels (nogil): softmax statistics, argmax, p(x0), entropy,
temperature / top-k / top-p draws with a counter-based RNG."""

from libc.stdint cimport int32_t, int64_t, uint64_t


cdef struct SamplingParams:
    float temperature      # 0: argmax
    int32_t top_k          # 0: off
    float top_p            # 1: off
    uint64_t seed
    int32_t skip_token     # never predicted (the mask token); -1: none


cdef struct RowResult:
    int32_t token          # x0
    float prob             # p(x0) under the sampling distribution
    float entropy          # entropy of the sampling distribution (nats)


cdef struct Candidate:
    float logit
    int32_t token


cdef void sample_row(const float * row, int64_t n_vocab, const SamplingParams * sp,
                     uint64_t counter, Candidate * scratch, RowResult * out) noexcept nogil

cdef void sample_rows(const float * logits, int64_t n_vocab, int n_rows, const SamplingParams * sp,
                      const uint64_t * counters, Candidate * scratch, RowResult * out,
                      int n_threads) noexcept nogil

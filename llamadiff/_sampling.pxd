# cython: language_level=3
"""Per-row CPU sampling kernels (nogil): softmax statistics, argmax, p(x0), entropy,
temperature / top-k / top-p draws with a counter-based RNG; ``RowSampler``, the object the
denoising loops sample through (CPU here, the GPU in ``llamadiff.cuda``)."""

from libc.stdint cimport int32_t, int64_t, uint64_t
from libcpp.vector cimport vector


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
    float margin           # p(top1) - p(top2) under the sampling distribution


cdef struct Candidate:
    float logit
    int32_t token


cdef void sample_row(const float * row, int64_t n_vocab, const SamplingParams * sp,
                     uint64_t counter, Candidate * scratch, RowResult * out) noexcept nogil

cdef void sample_rows(const float * logits, int64_t n_vocab, int n_rows, const SamplingParams * sp,
                      const uint64_t * counters, Candidate * scratch, RowResult * out,
                      int n_threads) noexcept nogil


cdef int check_rows(const RowResult * rows, int n_rows) except -1 nogil
    # DecodeError when a row's logits were not finite (NaN p(x0)): nothing may be committed
cdef int check_logits(const float * row, int64_t n) except -1 nogil
    # the same for a raw logits row


cdef class RowSampler:
    """Where a step's logits rows are sampled: x0, p(x0), entropy and margin per row.

    Abstract: ``CpuRowSampler`` here, ``llamadiff.cuda.CudaRowSampler`` on the GPU,
    ``llamadiff._backend.BackendRowSampler`` inside llama.cpp's graph. A route's
    capabilities are fixed when it is made.
    """
    # reads the logits from llama_get_logits (False: the rows are computed elsewhere, and
    # only for one sequence at a time -- full diffusion and batches then sample on the CPU)
    cdef readonly bint uses_host_logits

    cdef int reserve(self, int n_rows, int64_t n_vocab, const SamplingParams * sp) except -1
    cdef int sample(self, const float * logits, int64_t n_vocab, int n_rows, const SamplingParams * sp,
                    const uint64_t * counters, RowResult * out) except -1 nogil


cdef class CpuRowSampler(RowSampler):
    """``sample_rows`` on ``n_threads`` threads."""
    cdef readonly int n_threads
    cdef vector[Candidate] scratch

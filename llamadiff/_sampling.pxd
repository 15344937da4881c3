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
    int32_t plain_prob     # 1: also RowResult.plain_prob (LLaDA's Gumbel mode); 0: not needed


cdef struct RowResult:
    int32_t token          # x0
    float prob             # p(x0) under the sampling distribution
    float entropy          # entropy of the sampling distribution (nats)
    float margin           # p(top1) - p(top2) under the sampling distribution
    float plain_prob       # p(x0) under the plain softmax (temperature 1, no top-k / top-p),
                           # when SamplingParams.plain_prob asks for it


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
    # reads the rows of a decode's logits (False: the rows are computed elsewhere, and only
    # for one sequence at a time -- full diffusion and batches then sample on the CPU)
    cdef readonly bint uses_host_logits
    # wants the logits where they were computed: the scheduler leaves them on the device
    # (vendor/patches/0008) and hands over that memory (``sampler="device"``)
    cdef readonly bint in_place
    # can sample rows that lie in CUDA device memory (sample_device)
    cdef readonly bint reads_device
    # fills RowResult.plain_prob when SamplingParams.plain_prob asks (LLaDA's Gumbel mode needs it)
    cdef readonly bint gives_plain_prob
    cdef vector[float] guided_rows   # host scratch of sample_guided

    cdef int reserve(self, int n_rows, int64_t n_vocab, const SamplingParams * sp) except -1
    # n_rows rows of host memory
    cdef int sample(self, const float * logits, int64_t n_vocab, int n_rows, const SamplingParams * sp,
                    const uint64_t * counters, RowResult * out) except -1 nogil
    # n_rows rows in the memory of CUDA device ``device`` (only where reads_device)
    cdef int sample_device(self, const float * logits, int device, int64_t n_vocab, int n_rows,
                           const SamplingParams * sp, const uint64_t * counters,
                           RowResult * out) except -1 nogil
    # classifier-free guidance: rows 0..n_rows-1 of ``logits`` are conditional, the next n_rows
    # unconditional; samples un + scale * (cond - un) (device: -1 host memory, else CUDA)
    cdef int sample_guided(self, const float * logits, int device, int64_t n_vocab, int n_rows,
                           float scale, const SamplingParams * sp, const uint64_t * counters,
                           RowResult * out) except -1 nogil


cdef class CpuRowSampler(RowSampler):
    """``sample_rows`` on ``n_threads`` threads."""
    cdef readonly int n_threads
    cdef vector[Candidate] scratch

# cython: language_level=3
"""The inline C kernels of ``_kernels.h``: softmax statistics over a logits row, draws, and
the counter-based RNG that makes every random choice independent of threads and batching."""

from libc.stdint cimport int64_t, uint64_t


cdef extern from "_kernels.h" nogil:
    float ld_expf(float x)
    float ld_range_max(const float * row, int64_t lo, int64_t hi)
    void ld_row_argmax(const float * row, int64_t n, int64_t skip, float * max_out, int64_t * arg_out)
    void ld_row_softmax_stats(const float * row, int64_t n, int64_t skip, float m, float s,
                              double * z_out, double * e_out)
    int64_t ld_row_draw(const float * row, int64_t n, int64_t skip, float m, float s,
                        double target, int64_t fallback)
    double ld_uniform(uint64_t seed, uint64_t a, uint64_t b)


# streams of the counter RNG (third key of ld_uniform)
cdef enum:
    STREAM_SAMPLE = 0       # the row sampler's draws
    STREAM_RANDOM = 1       # random confidences (algorithm "random")
    STREAM_ORIGIN = 2       # the origin algorithm's transfer coin
    STREAM_ALG_TEMP = 3     # sampling positions with alg_temp

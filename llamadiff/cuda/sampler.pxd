# cython: language_level=3
"""The C interface of the GPU sampler (sampler.h / sampler.cu)."""

from libc.stdint cimport int32_t, int64_t, uint64_t


cdef extern from "sampler.h" nogil:
    ctypedef struct ld_cuda_params:
        float temperature
        int32_t top_k
        float top_p
        uint64_t seed
        int32_t skip_token
        int32_t plain_prob
    ctypedef struct ld_cuda_result:
        int32_t token
        float prob
        float entropy
        float margin
        float plain_prob
    ctypedef struct ld_cuda_timing:
        double upload_us
        double kernel_us
        int direct
    ctypedef struct ld_cuda_sampler:
        pass
    int ld_cuda_device_count()
    int ld_cuda_runtime_version()
    int ld_cuda_driver_version()
    const char * ld_cuda_error_string(int code)
    int ld_cuda_device_name(int device, char * buf, size_t size)
    int ld_cuda_sampler_create(int device, ld_cuda_sampler ** out)
    void ld_cuda_sampler_destroy(ld_cuda_sampler * s)
    int ld_cuda_sampler_sample(ld_cuda_sampler * s, const float * logits, int64_t n_vocab, int n_rows,
                               const ld_cuda_params * params, const uint64_t * counters,
                               ld_cuda_result * out)
    int ld_cuda_sampler_sample_device(ld_cuda_sampler * s, const float * d_logits, int64_t n_vocab,
                                      int n_rows, const ld_cuda_params * params,
                                      const uint64_t * counters, ld_cuda_result * out)
    int ld_cuda_sampler_sample_guided_device(ld_cuda_sampler * s, const float * d_logits, int64_t n_vocab,
                                             int n_rows, float scale, const ld_cuda_params * params,
                                             const uint64_t * counters, ld_cuda_result * out)
    int ld_cuda_sampler_device_buffer(ld_cuda_sampler * s, size_t n, float ** d_out)
    int ld_cuda_upload(ld_cuda_sampler * s, float * d_dst, const float * src, size_t n)
    void ld_cuda_sampler_last_timing(const ld_cuda_sampler * s, ld_cuda_timing * out)

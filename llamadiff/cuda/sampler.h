/* llamadiff's CUDA row sampler: a C interface, called from Cython (llamadiff/cuda/_sampler.pyx).
 *
 * For each row of a block's logits (n_rows x n_vocab, row-major, contiguous) one thread
 * block computes the row's max, log-sum-exp, argmax, the sampled token x0, p(x0), the
 * entropy of the sampling distribution and the top-2 margin; only these per-row results
 * come back to the host. The semantics are those of the CPU sampler (llamadiff/_sampling.pyx):
 *
 *   - skip_token (the mask token) is never predicted; NaN logits are never picked;
 *   - temperature 0 is the argmax (ties: lowest token id); temperature > 0 draws from
 *     softmax(logits / temperature) by inverse CDF with ONE uniform per row,
 *     ld_uniform(seed, counter, 0) from llamadiff/_kernels.h, accumulated in token order
 *     (or, with top-k / top-p, in descending-logit order) -- so for a given seed the GPU
 *     draws the same tokens as the CPU, up to float rounding at exact boundaries;
 *   - top-k, then top-p (keep while the mass before a token is < top_p), as SDAR applies them.
 *
 * All functions return 0 on success or a CUDA error code (cudaError_t as int); none aborts.
 */
#ifndef LLAMADIFF_CUDA_SAMPLER_H
#define LLAMADIFF_CUDA_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ld_cuda_params {
    float temperature;     /* 0: argmax */
    int32_t top_k;         /* 0: off */
    float top_p;           /* 1: off */
    uint64_t seed;
    int32_t skip_token;    /* never predicted (the mask token); -1: none */
    int32_t plain_prob;    /* 1: also fill ld_cuda_result.plain_prob */
} ld_cuda_params;

typedef struct ld_cuda_result {
    int32_t token;         /* x0 */
    float prob;            /* p(x0) under the sampling distribution */
    float entropy;         /* entropy of the sampling distribution (nats) */
    float margin;          /* p(top1) - p(top2) under the sampling distribution */
    float plain_prob;      /* p(x0) under the plain softmax (temperature 1, no top-k / top-p),
                              when ld_cuda_params.plain_prob asks for it */
} ld_cuda_result;

/* Microseconds spent in the phases of the last ld_cuda_sampler_sample call (host clock). */
typedef struct ld_cuda_timing {
    double upload_us;      /* host logits -> device (incl. staging memcpy when not pinned) */
    double kernel_us;      /* kernel + results back, after the upload finished */
    int direct;            /* 1: the logits were pinned and copied with one async copy */
} ld_cuda_timing;

typedef struct ld_cuda_sampler ld_cuda_sampler;

/* Number of CUDA devices; 0 without a driver or device (never an error). */
int ld_cuda_device_count(void);
/* Runtime and driver versions (e.g. 13000); 0 when unknown. */
int ld_cuda_runtime_version(void);
int ld_cuda_driver_version(void);
const char *ld_cuda_error_string(int code);
/* Name of device `device` into buf (NUL-terminated); returns an error code. */
int ld_cuda_device_name(int device, char *buf, size_t size);

int ld_cuda_sampler_create(int device, ld_cuda_sampler **out);
void ld_cuda_sampler_destroy(ld_cuda_sampler *s);

/* Sample n_rows rows of host logits. `counters` holds one RNG counter per row.
 * Pinned logits (cudaMallocHost / cudaHostRegister, e.g. llama.cpp's output buffer when the
 * output layer is on a CUDA device) are uploaded with one async copy straight from that
 * buffer; pageable logits go through pinned staging buffers reused across calls,
 * double-buffered so the host copy overlaps the DMA. */
int ld_cuda_sampler_sample(ld_cuda_sampler *s, const float *logits, int64_t n_vocab, int n_rows,
                           const ld_cuda_params *params, const uint64_t *counters,
                           ld_cuda_result *out);

/* The same on logits that already live on the sampler's device: llama.cpp's own logits
 * tensor when they stay on the GPU (sampler="device"; the caller has waited for the decode),
 * or a buffer of ld_cuda_sampler_device_buffer. Only the counters go up and the results
 * come back. */
int ld_cuda_sampler_sample_device(ld_cuda_sampler *s, const float *d_logits, int64_t n_vocab,
                                  int n_rows, const ld_cuda_params *params,
                                  const uint64_t *counters, ld_cuda_result *out);

/* Classifier-free guidance on device rows: rows 0..n_rows-1 of d_logits are conditional, the
 * next n_rows unconditional; samples un + scale * (cond - un), formed on the device. */
int ld_cuda_sampler_sample_guided_device(ld_cuda_sampler *s, const float *d_logits, int64_t n_vocab,
                                         int n_rows, float scale, const ld_cuda_params *params,
                                         const uint64_t *counters, ld_cuda_result *out);

/* Device buffer of at least n floats owned by the sampler (benchmarks: upload once, then
 * time ld_cuda_sampler_sample_device on it). */
int ld_cuda_sampler_device_buffer(ld_cuda_sampler *s, size_t n, float **d_out);
int ld_cuda_upload(ld_cuda_sampler *s, float *d_dst, const float *src, size_t n);

void ld_cuda_sampler_last_timing(const ld_cuda_sampler *s, ld_cuda_timing *out);

#ifdef __cplusplus
}
#endif

#endif

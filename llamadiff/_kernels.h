/* Per-row kernels over one row of logits, written so GCC/Clang vectorise them.
 *
 * Why C and not Cython: these loops run over the whole vocabulary (150k entries for
 * Qwen-family models) for every masked position at every denoising step, so they must
 * vectorise. libm's expf does not (without -ffast-math, which would also break the
 * -inf logits we rely on), so ld_expf is a small polynomial exp that does, accurate to
 * ~2 ulp over the range that matters and exactly 0 below -87.
 */
#ifndef LLAMADIFF_KERNELS_H
#define LLAMADIFF_KERNELS_H

#include <math.h>
#include <stdint.h>

/* The exp and RNG helpers are also compiled for the GPU (llamadiff/cuda/sampler.cu), so the
 * CUDA sampler computes the same weights and draws the same uniforms as this file. */
#if defined(__CUDACC__)
#define LD_HD __host__ __device__
#else
#define LD_HD
#endif

/* exp(x) for x already clamped to [-87, 88]: exp(x) = 2^n * exp(r), n = round(x / ln2),
 * |r| <= ln2/2, exp(r) by a degree-7 polynomial, 2^n built in the exponent bits. */
static inline LD_HD float ld_exp_clamped(float x) {
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t) n + 127) << 23;
    return p * scale.f;
}

/* exp(x) for any x: exactly 0 below -87 (so -inf logits weigh nothing), saturating above 88. */
static inline LD_HD float ld_expf(float x) {
    float xc = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float y = ld_exp_clamped(xc);
    return x < -87.0f ? 0.0f : y;
}

/* Largest value of row[lo:hi] (vectorised max reduction). */
static inline float ld_range_max(const float *row, int64_t lo, int64_t hi) {
    float best = -INFINITY;
#pragma omp simd reduction(max:best)
    for (int64_t i = lo; i < hi; ++i) {
        best = row[i] > best ? row[i] : best;
    }
    return best;
}

/* Largest value of row[0:n] and its first index, skipping index `skip` (-1: none). */
static inline void ld_row_argmax(const float *row, int64_t n, int64_t skip, float *max_out, int64_t *arg_out) {
    float best;
    if (skip >= 0 && skip < n) {
        float a = ld_range_max(row, 0, skip), b = ld_range_max(row, skip + 1, n);
        best = a >= b ? a : b;
    } else {
        best = ld_range_max(row, 0, n);
    }
    int64_t arg = -1;
    for (int64_t i = 0; i < n; ++i) {   /* first index holding the max: usually an early exit */
        if (row[i] == best && i != skip) {
            arg = i;
            break;
        }
    }
    if (arg < 0) { /* every value is -inf or NaN: fall back to the first allowed index */
        arg = skip == 0 ? (n > 1 ? 1 : 0) : 0;
        best = row[arg];
    }
    *max_out = best;
    *arg_out = arg;
}

/* exp(d) for d <= 0, clamped below at -87 (exp(-87) ~ 1.6e-38 stands for 0). */
static inline LD_HD float ld_expf_nonpos(float d) {
    return ld_exp_clamped(d < -87.0f ? -87.0f : d);
}

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
/* ld_exp_clamped on 8 lanes, after clamping below (compilers do not vectorise the
 * exponent-bit trick by themselves). */
static inline __m256 ld_exp8_nonpos(__m256 d) {
    d = _mm256_max_ps(d, _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(d, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), d);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline double ld_hsum8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128d a = _mm_add_pd(_mm_cvtps_pd(lo), _mm_cvtps_pd(_mm_movehl_ps(lo, lo)));
    __m128d b = _mm_add_pd(_mm_cvtps_pd(hi), _mm_cvtps_pd(_mm_movehl_ps(hi, hi)));
    __m128d c = _mm_add_pd(a, b);
    return _mm_cvtsd_f64(c) + _mm_cvtsd_f64(_mm_unpackhi_pd(c, c));
}
#endif

/* Sums over row[lo:hi] of w = exp(s*(row[i]-m)) and of w * s*(row[i]-m) (all row[i] <= m).
 * Float SIMD lanes within chunks of 4096, chunks folded in double: fast, and the rounding
 * error stays near 1e-7 relative. */
static inline void ld_range_softmax_sums(const float *row, int64_t lo, int64_t hi, float m, float s,
                                         double *z, double *e) {
    int64_t i = lo;
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 vm = _mm256_set1_ps(m), vs = _mm256_set1_ps(s), vlo = _mm256_set1_ps(-87.0f);
    while (i + 8 <= hi) {
        const int64_t end = i + 4096 < hi ? i + 4096 : hi;
        __m256 zb = _mm256_setzero_ps(), eb = _mm256_setzero_ps();
        for (; i + 8 <= end; i += 8) {
            __m256 d = _mm256_max_ps(_mm256_mul_ps(vs, _mm256_sub_ps(_mm256_loadu_ps(row + i), vm)), vlo);
            __m256 w = ld_exp8_nonpos(d);
            zb = _mm256_add_ps(zb, w);
            eb = _mm256_fmadd_ps(w, d, eb);
        }
        *z += ld_hsum8(zb);
        *e += ld_hsum8(eb);
    }
#endif
    for (; i < hi; ++i) {
        float d = s * (row[i] - m);
        d = d < -87.0f ? -87.0f : d;
        float w = ld_expf_nonpos(d);
        *z += w;
        *e += w * d;
    }
}

/* Z = sum exp(s*(row[i] - m)) and E = sum exp(s*(row[i]-m)) * s*(row[i]-m), leaving out
 * index `skip` (which may hold a huge logit, so it is never added in the first place).
 * With p_i = exp(...)/Z: the entropy of p is log(Z) - E/Z. */
static inline void ld_row_softmax_stats(const float *row, int64_t n, int64_t skip, float m, float s,
                                        double *z_out, double *e_out) {
    double z = 0.0, e = 0.0;
    if (skip >= 0 && skip < n) {
        ld_range_softmax_sums(row, 0, skip, m, s, &z, &e);
        ld_range_softmax_sums(row, skip + 1, n, m, s, &z, &e);
    } else {
        ld_range_softmax_sums(row, 0, n, m, s, &z, &e);
    }
    *z_out = z;
    *e_out = e;
}

/* Inverse-CDF draw: the first index where the running sum of exp(s*(row[i]-m)) exceeds
 * target (target = u * Z). Skips `skip`. */
static inline int64_t ld_row_draw(const float *row, int64_t n, int64_t skip, float m, float s,
                                  double target, int64_t fallback) {
    double acc = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        if (i == skip) continue;
        acc += ld_expf(s * (row[i] - m));
        if (acc > target) return i;
    }
    return fallback;
}

/* splitmix64: a counter-based generator, so a draw depends only on (seed, counter) and
 * not on thread scheduling. */
static inline LD_HD uint64_t ld_mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Uniform double in [0, 1) from (seed, a, b). */
static inline LD_HD double ld_uniform(uint64_t seed, uint64_t a, uint64_t b) {
    uint64_t h = ld_mix64(seed ^ ld_mix64(a * 0x100000001B3ull + ld_mix64(b)));
    return (double) (h >> 11) * (1.0 / 9007199254740992.0);
}

#endif

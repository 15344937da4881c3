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
#include <string.h>

static inline float ld_expf(float x) {
    /* exp(x) = 2^n * exp(r), n = round(x / ln2), |r| <= ln2/2 */
    const float lo = -87.0f, hi = 88.0f;
    float xc = x < lo ? lo : (x > hi ? hi : x);
    float n = floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t) n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float y = p * scale;
    return x < lo ? 0.0f : y;
}

/* Largest value of row[0:n] and its first index, skipping index `skip` (-1: none). */
static inline void ld_row_argmax(const float *row, int64_t n, int64_t skip, float *max_out, int64_t *arg_out) {
    float best = -INFINITY;
    int64_t arg = -1;
    for (int64_t i = 0; i < n; ++i) {
        float v = row[i];
        if (v > best && i != skip) {
            best = v;
            arg = i;
        }
    }
    if (arg < 0) { /* every value is -inf or NaN: fall back to the first allowed index */
        arg = skip == 0 ? (n > 1 ? 1 : 0) : 0;
        best = row[arg];
    }
    *max_out = best;
    *arg_out = arg;
}

/* Sums over row[lo:hi] of w = exp(s*(row[i]-m)) and of w * s*(row[i]-m), accumulated in
 * 8 independent double lanes (vectorises; keeps rounding error far below 1e-6). */
static inline void ld_range_softmax_sums(const float *row, int64_t lo, int64_t hi, float m, float s,
                                         double *z, double *e) {
    double zs[8] = {0}, es[8] = {0};
    int64_t i = lo;
    for (; i + 8 <= hi; i += 8) {
        for (int k = 0; k < 8; ++k) {
            float d = s * (row[i + k] - m);
            float w = ld_expf(d);
            zs[k] += w;
            es[k] += w > 0.0f ? (double) (w * d) : 0.0;
        }
    }
    for (; i < hi; ++i) {
        float d = s * (row[i] - m);
        float w = ld_expf(d);
        zs[0] += w;
        es[0] += w > 0.0f ? (double) (w * d) : 0.0;
    }
    for (int k = 0; k < 8; ++k) {
        *z += zs[k];
        *e += es[k];
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
static inline uint64_t ld_mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Uniform double in [0, 1) from (seed, a, b). */
static inline double ld_uniform(uint64_t seed, uint64_t a, uint64_t b) {
    uint64_t h = ld_mix64(seed ^ ld_mix64(a * 0x100000001B3ull + ld_mix64(b)));
    return (double) (h >> 11) * (1.0 / 9007199254740992.0);
}

#endif

/* llamadiff's CUDA row sampler (see sampler.h for the contract).
 *
 * One thread block per row. Fast path (no top-k / top-p), at most three passes over the
 * row, all from L2 after the first:
 *   1. max, first argmax, second-largest value (for the margin), skipping the mask token;
 *   2. Z = sum w_i and E = sum w_i d_i with d_i = max(s*(x_i - m), -87), w_i = exp(d_i)
 *      (exactly ld_row_softmax_stats' clamp), so p(x0) = w(x0)/Z, H = log Z - E/Z;
 *   3. temperature > 0 only: inverse-CDF draw, target = u * Z with u = ld_uniform(seed,
 *      counter, 0): each thread sums a contiguous chunk, a block scan finds the chunk where
 *      the running sum crosses the target, and that thread walks its chunk in token order,
 *      like ld_row_draw.
 * Filtered path (top-k and/or top-p): candidates are ordered by the 64-bit key
 * (ordered-float(logit) << 32 | ~token), i.e. descending logit then ascending token id, the
 * CPU's sort order. A radix select (8 bits per pass, with an early exit when one element is
 * left) finds the k-th key (top-k), the key where the descending cumulative mass reaches
 * top_p * Z (top-p), and the key where it passes u * Z_kept (the draw) -- no sort at all.
 *
 * Numerics: weights are float (the same polynomial exp as the CPU, from _kernels.h), sums are
 * double. Mass histograms use double atomics, so a draw that lands within rounding of a
 * boundary may differ from the CPU's (and between runs); everything else is deterministic.
 */
#include "sampler.h"

#include <cuda_runtime.h>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>

#include "../_kernels.h"

namespace {

constexpr int kThreads = 512;
constexpr size_t kStageFloats = size_t(1) << 19;   // 2 MiB per staging buffer (two of them)

struct Top2 {
    float v1;        // largest value
    int64_t i1;      // its first index (INT64_MAX: none)
    float v2;        // second largest value (-inf: none), ties with v1 allowed
    int n_valid;     // up to 2: how many valid values were seen
};

__device__ __forceinline__ Top2 top2_merge(const Top2 &a, const Top2 &b) {
    Top2 r;
    const bool a_first = (a.v1 > b.v1) || (a.v1 == b.v1 && a.i1 < b.i1) || (b.i1 == INT64_MAX);
    const Top2 &w = a_first && a.i1 != INT64_MAX ? a : b;
    const Top2 &l = a_first && a.i1 != INT64_MAX ? b : a;
    r.v1 = w.v1;
    r.i1 = w.i1;
    float second = w.v2;
    if (l.i1 != INT64_MAX && l.v1 > second) second = l.v1;
    if (l.v2 > second) second = l.v2;
    r.v2 = second;
    int n = a.n_valid + b.n_valid;
    r.n_valid = n > 2 ? 2 : n;
    return r;
}

struct Top2Op {
    __device__ __forceinline__ Top2 operator()(const Top2 &a, const Top2 &b) const { return top2_merge(a, b); }
};

struct Sums {
    double z, e;
};
struct SumsOp {
    __device__ __forceinline__ Sums operator()(const Sums &a, const Sums &b) const { return {a.z + b.z, a.e + b.e}; }
};

__device__ __forceinline__ bool valid(float x, int64_t i, int64_t skip) {
    return i != skip && !isnan(x);
}

__device__ __forceinline__ uint32_t ordered(float x) {
    uint32_t u = __float_as_uint(x);
    return u ^ ((u >> 31) ? 0xFFFFFFFFu : 0x80000000u);
}

/* Larger key = earlier in the CPU's candidate order (higher logit, then lower token id). */
__device__ __forceinline__ uint64_t cand_key(float x, int64_t i) {
    return (uint64_t(ordered(x)) << 32) | uint64_t(0xFFFFFFFFu - uint32_t(i));
}

__device__ __forceinline__ int64_t key_token(uint64_t key) {
    return int64_t(0xFFFFFFFFu - uint32_t(key & 0xFFFFFFFFu));
}

struct Shared {
    union {
        cub::BlockReduce<Top2, kThreads>::TempStorage top2;
        cub::BlockReduce<Sums, kThreads>::TempStorage sums;
        cub::BlockScan<double, kThreads>::TempStorage scan;
        cub::BlockReduce<int, kThreads>::TempStorage count;
    } cub;
    unsigned int hist_count[256];
    double hist_mass[256];
    uint64_t prefix;
    int digit;
    int found;           // select: 1 found, 0 none
    uint64_t result_key;
    double rem_mass;
    long long rem_count;
    Top2 top2;
    Sums sums;
    int64_t pick;
    int kept;
};

enum SelectMode { kByCount = 0, kByMass = 1 };

/* Radix select over the valid candidates with key >= lo:
 *   kByCount: the key of the k-th largest (1-based);
 *   kByMass:  the key of the first candidate (descending order) whose inclusive running
 *             mass is >= target (strict = false) or > target (strict = true).
 * Returns 1 and the key in *key_out, or 0 when there is no such candidate. Block-wide. */
__device__ int radix_select(const float *row, int64_t n, int64_t skip, float s, float m, uint64_t lo,
                            int mode, long long k, double target, bool strict, Shared &sh,
                            uint64_t *key_out) {
    __syncthreads();   // every thread is done with the shared state of the previous call
    if (threadIdx.x == 0) {
        sh.prefix = 0;
        sh.rem_count = k;
        sh.rem_mass = target;
        sh.found = -1;
    }
    __syncthreads();
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) {
            sh.hist_count[b] = 0;
            sh.hist_mass[b] = 0.0;
        }
        __syncthreads();
        const uint64_t prefix = sh.prefix;
        const uint64_t high_mask = shift == 56 ? 0 : (~uint64_t(0) << (shift + 8));
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            const float x = row[i];
            if (!valid(x, i, skip)) continue;
            const uint64_t key = cand_key(x, i);
            if (key < lo || (key & high_mask) != prefix) continue;
            const int d = int((key >> shift) & 0xFF);
            atomicAdd(&sh.hist_count[d], 1u);
            if (mode == kByMass) atomicAdd(&sh.hist_mass[d], double(ld_expf(s * (x - m))));
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int chosen = -1;
            if (mode == kByCount) {
                long long acc = 0;
                for (int b = 255; b >= 0; --b) {
                    const long long c = sh.hist_count[b];
                    if (acc + c >= sh.rem_count) { chosen = b; sh.rem_count -= acc; break; }
                    acc += c;
                }
            } else {
                double acc = 0.0;
                for (int b = 255; b >= 0; --b) {
                    if (sh.hist_count[b] == 0) continue;
                    const double c = acc + sh.hist_mass[b];
                    if (strict ? c > sh.rem_mass : c >= sh.rem_mass) { chosen = b; sh.rem_mass -= acc; break; }
                    acc = c;
                }
            }
            if (chosen < 0) {
                sh.found = 0;
            } else {
                sh.prefix = prefix | (uint64_t(chosen) << shift);
                sh.digit = chosen;
                if (sh.hist_count[chosen] == 1 && shift > 0) sh.found = 2;   // one element left
                else if (shift == 0) { sh.found = 1; sh.result_key = sh.prefix; }
            }
        }
        __syncthreads();
        if (sh.found == 0) return 0;
        if (sh.found == 1) { *key_out = sh.result_key; return 1; }
        if (sh.found == 2) {
            // exactly one candidate has this prefix: find it
            const uint64_t mask = ~uint64_t(0) << shift;
            const uint64_t p = sh.prefix;
            for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
                const float x = row[i];
                if (!valid(x, i, skip)) continue;
                const uint64_t key = cand_key(x, i);
                if (key >= lo && (key & mask) == p) sh.result_key = key;
            }
            __syncthreads();
            *key_out = sh.result_key;
            return 1;
        }
    }
    return 0;  // not reached
}

__device__ Sums masked_sums(const float *row, int64_t n, int64_t skip, float s, float m, uint64_t lo,
                            bool filtered, Shared &sh, int *count_out) {
    Sums local = {0.0, 0.0};
    int count = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float x = row[i];
        if (!valid(x, i, skip)) continue;
        if (filtered) {
            if (cand_key(x, i) < lo) continue;
            const float d = s * (x - m);
            const float w = ld_expf(d);
            local.z += w;
            if (w > 0) local.e += double(w) * double(d);
            ++count;
        } else {
            float d = s * (x - m);
            d = fmaxf(d, -87.0f);   // NaN-free here; same clamp as the CPU kernels
            const float w = ld_expf_nonpos(d);
            local.z += w;
            local.e += double(w) * double(d);
        }
    }
    Sums total = cub::BlockReduce<Sums, kThreads>(sh.cub.sums).Reduce(local, SumsOp());
    __syncthreads();
    if (count_out) {
        int c = cub::BlockReduce<int, kThreads>(sh.cub.count).Sum(count);
        if (threadIdx.x == 0) sh.kept = c;
        __syncthreads();
        *count_out = sh.kept;
    }
    if (threadIdx.x == 0) sh.sums = total;
    __syncthreads();
    return sh.sums;
}

/* Inverse-CDF draw in token order (fast path): first index whose running weight exceeds target. */
__device__ int64_t draw_in_order(const float *row, int64_t n, int64_t skip, float s, float m,
                                 double target, int64_t fallback, Shared &sh) {
    const int64_t chunk = (n + blockDim.x - 1) / blockDim.x;
    const int64_t lo = int64_t(threadIdx.x) * chunk;
    const int64_t hi = lo + chunk < n ? lo + chunk : n;
    double local = 0.0;
    for (int64_t i = lo; i < hi; ++i) {
        if (i == skip) continue;
        local += ld_expf(s * (row[i] - m));
    }
    double before;
    cub::BlockScan<double, kThreads>(sh.cub.scan).ExclusiveSum(local, before);
    if (threadIdx.x == 0) sh.pick = -1;
    __syncthreads();
    if (before <= target && before + local > target) {
        double acc = before;
        int64_t pick = -1, last = -1;
        for (int64_t i = lo; i < hi; ++i) {
            if (i == skip) continue;
            last = i;
            acc += ld_expf(s * (row[i] - m));
            if (acc > target) { pick = i; break; }
        }
        if (pick < 0) pick = last;   // rounding between the scan and this walk
        sh.pick = pick;   // at most one thread's chunk holds the crossing
    }
    __syncthreads();
    const int64_t pick = sh.pick;
    __syncthreads();
    return pick >= 0 ? pick : fallback;
}

__global__ void __launch_bounds__(kThreads)
sample_rows_kernel(const float *__restrict__ logits, int64_t n, ld_cuda_params p,
                   const uint64_t *__restrict__ counters, ld_cuda_result *__restrict__ out) {
    __shared__ Shared sh;
    const int r = blockIdx.x;
    const float *row = logits + int64_t(r) * n;
    const int64_t skip = p.skip_token;
    const float s = p.temperature > 0 ? 1.0f / p.temperature : 1.0f;

    // pass 1: max, first argmax, second value
    Top2 local = {-INFINITY, INT64_MAX, -INFINITY, 0};
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float x = row[i];
        if (!valid(x, i, skip)) continue;
        if (local.i1 == INT64_MAX || x > local.v1) {
            if (local.i1 != INT64_MAX && local.v1 > local.v2) local.v2 = local.v1;
            local.v1 = x;
            local.i1 = i;
        } else if (x > local.v2) {
            local.v2 = x;
        }
        if (local.n_valid < 2) ++local.n_valid;
    }
    Top2 t = cub::BlockReduce<Top2, kThreads>(sh.cub.top2).Reduce(local, Top2Op());
    if (threadIdx.x == 0) sh.top2 = t;
    __syncthreads();
    t = sh.top2;
    int64_t arg = t.i1;
    float m = t.v1;
    if (arg == INT64_MAX) {   // every value NaN (or only the skipped one): as the CPU does
        arg = skip == 0 ? (n > 1 ? 1 : 0) : 0;
        m = row[arg];
    }
    const bool filtered = (p.top_k > 0 && p.top_k < n) || p.top_p < 1.0f;
    const uint64_t counter = counters[r];
    int64_t pick = arg;
    double z;
    double e;
    float margin;

    if (!filtered) {
        const Sums sums = masked_sums(row, n, skip, s, m, 0, false, sh, nullptr);
        z = sums.z;
        e = sums.e;
        if (p.temperature > 0) {
            const double target = ld_uniform(p.seed, counter, 0) * z;
            pick = draw_in_order(row, n, skip, s, m, target, arg, sh);
        }
        const float w2 = t.n_valid >= 2 ? ld_expf(s * (t.v2 - m)) : 0.0f;
        margin = float((1.0 - double(w2)) / z);
    } else {
        uint64_t lo = 0, key;
        if (p.top_k > 0 && p.top_k < n) {
            if (radix_select(row, n, skip, s, m, 0, kByCount, p.top_k, 0.0, false, sh, &key)) lo = key;
        }
        if (p.top_p < 1.0f) {
            double zk;
            if (lo != 0) {
                zk = masked_sums(row, n, skip, s, m, lo, true, sh, nullptr).z;
            } else {
                zk = masked_sums(row, n, skip, s, m, 0, false, sh, nullptr).z;
            }
            if (radix_select(row, n, skip, s, m, lo, kByMass, 0, double(p.top_p) * zk, false, sh, &key)) lo = key;
        }
        int kept = 0;
        const Sums sums = masked_sums(row, n, skip, s, m, lo, true, sh, &kept);
        z = sums.z;
        e = sums.e;
        if (p.temperature > 0) {
            const double target = ld_uniform(p.seed, counter, 0) * z;
            if (radix_select(row, n, skip, s, m, lo, kByMass, 0, target, true, sh, &key)) {
                pick = key_token(key);
            } else if (radix_select(row, n, skip, s, m, lo, kByCount, kept > 0 ? kept : 1, 0.0, false, sh, &key)) {
                pick = key_token(key);   // the last kept candidate, as the CPU falls back
            }
        }
        const float w2 = (kept >= 2 && t.n_valid >= 2) ? ld_expf(s * (t.v2 - m)) : 0.0f;
        margin = float((1.0 - double(w2)) / z);
    }
    float plain = 0.0f;
    if (p.plain_prob) {
        // p(x0) under the plain softmax: the CPU's _plain_prob (max, then sums at s = 1)
        const double z1 = masked_sums(row, n, skip, 1.0f, m, 0, false, sh, nullptr).z;
        plain = float(double(ld_expf(row[pick] - m)) / z1);
    }
    if (threadIdx.x == 0) {
        ld_cuda_result res;
        res.token = int32_t(pick);
        res.prob = float(double(ld_expf(s * (row[pick] - m))) / z);
        res.entropy = float(log(z) - e / z);
        res.margin = margin;
        res.plain_prob = plain;
        out[r] = res;
    }
}

/* Guided rows: dst[r] = fma(scale, cond[r] - un[r], un[r]), cond = src rows 0..R-1, un = R..2R-1:
 * the host loop's operations and rounding (RowSampler.sample_guided). */
__global__ void guide_rows_kernel(const float *__restrict__ src, float *__restrict__ dst, int64_t n,
                                  int n_rows, float scale) {
    for (int r = blockIdx.y; r < n_rows; r += gridDim.y) {
        const float *cond = src + int64_t(r) * n;
        const float *un = src + int64_t(n_rows + r) * n;
        float *out = dst + int64_t(r) * n;
        for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
            out[i] = __fmaf_rn(scale, __fsub_rn(cond[i], un[i]), un[i]);
        }
    }
}

double now_us() {
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

struct ld_cuda_sampler {
    int device = 0;
    cudaStream_t stream = nullptr;
    float *d_logits = nullptr;
    size_t cap_logits = 0;
    float *stage[2] = {nullptr, nullptr};
    cudaEvent_t stage_done[2] = {nullptr, nullptr};
    uint64_t *d_counters = nullptr;
    ld_cuda_result *d_out = nullptr;
    uint64_t *h_counters = nullptr;     // pinned
    ld_cuda_result *h_out = nullptr;    // pinned
    int cap_rows = 0;
    float *d_user = nullptr;            // ld_cuda_sampler_device_buffer
    size_t cap_user = 0;
    ld_cuda_timing timing = {0.0, 0.0, 0};
};

#define LD_TRY(call)                                  \
    do {                                              \
        cudaError_t err_ = (call);                    \
        if (err_ != cudaSuccess) return int(err_);    \
    } while (0)

extern "C" {

int ld_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();   // clear the sticky "no driver" error
        return 0;
    }
    return n;
}

int ld_cuda_runtime_version(void) {
    int v = 0;
    return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : 0;
}

int ld_cuda_driver_version(void) {
    int v = 0;
    return cudaDriverGetVersion(&v) == cudaSuccess ? v : 0;
}

const char *ld_cuda_error_string(int code) {
    return cudaGetErrorString(cudaError_t(code));
}

int ld_cuda_device_name(int device, char *buf, size_t size) {
    cudaDeviceProp prop;
    LD_TRY(cudaGetDeviceProperties(&prop, device));
    if (size > 0) {
        std::strncpy(buf, prop.name, size - 1);
        buf[size - 1] = '\0';
    }
    return 0;
}

void ld_cuda_sampler_destroy(ld_cuda_sampler *s) {
    if (!s) return;
    cudaSetDevice(s->device);
    if (s->stream) cudaStreamSynchronize(s->stream);
    cudaFree(s->d_logits);
    cudaFree(s->d_counters);
    cudaFree(s->d_out);
    cudaFree(s->d_user);
    for (int i = 0; i < 2; ++i) {
        cudaFreeHost(s->stage[i]);
        if (s->stage_done[i]) cudaEventDestroy(s->stage_done[i]);
    }
    cudaFreeHost(s->h_counters);
    cudaFreeHost(s->h_out);
    if (s->stream) cudaStreamDestroy(s->stream);
    delete s;
}

int ld_cuda_sampler_create(int device, ld_cuda_sampler **out) {
    *out = nullptr;
    int n = ld_cuda_device_count();
    if (device < 0 || device >= n) return int(n == 0 ? cudaErrorNoDevice : cudaErrorInvalidDevice);
    ld_cuda_sampler *s = new (std::nothrow) ld_cuda_sampler();
    if (!s) return int(cudaErrorMemoryAllocation);
    s->device = device;
    cudaError_t err = cudaSetDevice(device);
    if (err == cudaSuccess) err = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
    for (int i = 0; i < 2 && err == cudaSuccess; ++i) {
        err = cudaMallocHost(&s->stage[i], kStageFloats * sizeof(float));
        if (err == cudaSuccess) err = cudaEventCreateWithFlags(&s->stage_done[i], cudaEventDisableTiming);
    }
    if (err != cudaSuccess) {
        ld_cuda_sampler_destroy(s);
        return int(err);
    }
    *out = s;
    return 0;
}

static int reserve(ld_cuda_sampler *s, size_t n_floats, int n_rows) {
    if (n_floats > s->cap_logits) {
        cudaFree(s->d_logits);
        s->d_logits = nullptr;
        s->cap_logits = 0;
        LD_TRY(cudaMalloc(&s->d_logits, n_floats * sizeof(float)));
        s->cap_logits = n_floats;
    }
    if (n_rows > s->cap_rows) {
        int cap = n_rows < 64 ? 64 : n_rows;
        cudaFree(s->d_counters);
        cudaFree(s->d_out);
        cudaFreeHost(s->h_counters);
        cudaFreeHost(s->h_out);
        s->d_counters = nullptr;
        s->d_out = nullptr;
        s->h_counters = nullptr;
        s->h_out = nullptr;
        s->cap_rows = 0;
        LD_TRY(cudaMalloc(&s->d_counters, cap * sizeof(uint64_t)));
        LD_TRY(cudaMalloc(&s->d_out, cap * sizeof(ld_cuda_result)));
        LD_TRY(cudaMallocHost(&s->h_counters, cap * sizeof(uint64_t)));
        LD_TRY(cudaMallocHost(&s->h_out, cap * sizeof(ld_cuda_result)));
        s->cap_rows = cap;
    }
    return 0;
}

static bool is_pinned(const void *p) {
    cudaPointerAttributes attr;
    if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
        cudaGetLastError();
        return false;
    }
    return attr.type == cudaMemoryTypeHost;
}

static int upload(ld_cuda_sampler *s, float *dst, const float *src, size_t n) {
    if (is_pinned(src)) {
        s->timing.direct = 1;
        LD_TRY(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyHostToDevice, s->stream));
        return 0;
    }
    s->timing.direct = 0;
    int k = 0;
    for (size_t off = 0; off < n; off += kStageFloats, ++k) {
        const int slot = k & 1;
        const size_t len = n - off < kStageFloats ? n - off : kStageFloats;
        LD_TRY(cudaEventSynchronize(s->stage_done[slot]));   // its last copy has finished
        std::memcpy(s->stage[slot], src + off, len * sizeof(float));
        LD_TRY(cudaMemcpyAsync(dst + off, s->stage[slot], len * sizeof(float), cudaMemcpyHostToDevice, s->stream));
        LD_TRY(cudaEventRecord(s->stage_done[slot], s->stream));
    }
    return 0;
}

static int run(ld_cuda_sampler *s, const float *d_logits, int64_t n_vocab, int n_rows,
               const ld_cuda_params *params, ld_cuda_result *out) {
    sample_rows_kernel<<<n_rows, kThreads, 0, s->stream>>>(d_logits, n_vocab, *params, s->d_counters, s->d_out);
    LD_TRY(cudaGetLastError());
    LD_TRY(cudaMemcpyAsync(s->h_out, s->d_out, n_rows * sizeof(ld_cuda_result), cudaMemcpyDeviceToHost, s->stream));
    LD_TRY(cudaStreamSynchronize(s->stream));
    std::memcpy(out, s->h_out, n_rows * sizeof(ld_cuda_result));
    return 0;
}

static int check_args(ld_cuda_sampler *s, int64_t n_vocab, int n_rows, const ld_cuda_params *p) {
    if (!s || !p || n_vocab < 1 || n_rows < 0 || n_vocab > 0x7FFFFFFF) return int(cudaErrorInvalidValue);
    if (!(p->temperature >= 0.0f) || !(p->top_p > 0.0f && p->top_p <= 1.0f) || p->top_k < 0) {
        return int(cudaErrorInvalidValue);
    }
    return 0;
}

/* The rows' RNG counters to the device (through the pinned buffer: the copy is async). */
static int upload_counters(ld_cuda_sampler *s, const uint64_t *counters, int n_rows) {
    std::memcpy(s->h_counters, counters, n_rows * sizeof(uint64_t));
    LD_TRY(cudaMemcpyAsync(s->d_counters, s->h_counters, n_rows * sizeof(uint64_t), cudaMemcpyHostToDevice, s->stream));
    return 0;
}

int ld_cuda_sampler_sample(ld_cuda_sampler *s, const float *logits, int64_t n_vocab, int n_rows,
                           const ld_cuda_params *params, const uint64_t *counters, ld_cuda_result *out) {
    int rc = check_args(s, n_vocab, n_rows, params);
    if (rc || n_rows == 0) return rc;
    LD_TRY(cudaSetDevice(s->device));
    const size_t n = size_t(n_vocab) * size_t(n_rows);
    if ((rc = reserve(s, n, n_rows))) return rc;
    const double t0 = now_us();
    if ((rc = upload_counters(s, counters, n_rows))) return rc;
    if ((rc = upload(s, s->d_logits, logits, n))) return rc;
    const double t1 = now_us();
    rc = run(s, s->d_logits, n_vocab, n_rows, params, out);
    s->timing.upload_us = t1 - t0;   // host time to enqueue (staged: includes the host copies)
    s->timing.kernel_us = now_us() - t1;
    return rc;
}

int ld_cuda_sampler_sample_device(ld_cuda_sampler *s, const float *d_logits, int64_t n_vocab, int n_rows,
                                  const ld_cuda_params *params, const uint64_t *counters, ld_cuda_result *out) {
    int rc = check_args(s, n_vocab, n_rows, params);
    if (rc || n_rows == 0) return rc;
    LD_TRY(cudaSetDevice(s->device));
    if ((rc = reserve(s, 0, n_rows))) return rc;
    const double t0 = now_us();
    if ((rc = upload_counters(s, counters, n_rows))) return rc;
    rc = run(s, d_logits, n_vocab, n_rows, params, out);
    s->timing.upload_us = 0.0;
    s->timing.kernel_us = now_us() - t0;
    s->timing.direct = 1;
    return rc;
}

int ld_cuda_sampler_sample_guided_device(ld_cuda_sampler *s, const float *d_logits, int64_t n_vocab,
                                         int n_rows, float scale, const ld_cuda_params *params,
                                         const uint64_t *counters, ld_cuda_result *out) {
    int rc = check_args(s, n_vocab, n_rows, params);
    if (rc || n_rows == 0) return rc;
    if (!std::isfinite(scale)) return int(cudaErrorInvalidValue);
    LD_TRY(cudaSetDevice(s->device));
    const size_t n = size_t(n_vocab) * size_t(n_rows);
    if ((rc = reserve(s, n, n_rows))) return rc;
    const double t0 = now_us();
    if ((rc = upload_counters(s, counters, n_rows))) return rc;
    const dim3 grid(unsigned((n_vocab + 1023) / 1024 < 64 ? (n_vocab + 1023) / 1024 : 64),
                    unsigned(n_rows < 65535 ? n_rows : 65535));
    guide_rows_kernel<<<grid, 1024, 0, s->stream>>>(d_logits, s->d_logits, n_vocab, n_rows, scale);
    LD_TRY(cudaGetLastError());
    rc = run(s, s->d_logits, n_vocab, n_rows, params, out);
    s->timing.upload_us = 0.0;
    s->timing.kernel_us = now_us() - t0;
    s->timing.direct = 1;
    return rc;
}

int ld_cuda_sampler_device_buffer(ld_cuda_sampler *s, size_t n, float **d_out) {
    *d_out = nullptr;
    LD_TRY(cudaSetDevice(s->device));
    if (n > s->cap_user) {
        cudaFree(s->d_user);
        s->d_user = nullptr;
        s->cap_user = 0;
        LD_TRY(cudaMalloc(&s->d_user, n * sizeof(float)));
        s->cap_user = n;
    }
    *d_out = s->d_user;
    return 0;
}

int ld_cuda_upload(ld_cuda_sampler *s, float *d_dst, const float *src, size_t n) {
    LD_TRY(cudaSetDevice(s->device));
    int rc = upload(s, d_dst, src, n);
    if (rc) return rc;
    LD_TRY(cudaStreamSynchronize(s->stream));
    return 0;
}

void ld_cuda_sampler_last_timing(const ld_cuda_sampler *s, ld_cuda_timing *out) {
    *out = s->timing;
}

}  // extern "C"

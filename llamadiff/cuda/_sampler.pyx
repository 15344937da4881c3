# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""The GPU row sampler (llamadiff/cuda/sampler.cu) as a RowSampler: built only with
LLAMADIFF_CUDA=1 (or LLAMADIFF_CUDA_SAMPLER=1)."""

from libc.stdint cimport int32_t, int64_t, uint64_t

from llamadiff._sampling cimport SamplingParams, RowResult, RowSampler
from llamadiff.cuda.sampler cimport (ld_cuda_device_count, ld_cuda_device_name,
                                     ld_cuda_driver_version, ld_cuda_error_string, ld_cuda_params,
                                     ld_cuda_result, ld_cuda_runtime_version, ld_cuda_sampler,
                                     ld_cuda_sampler_create, ld_cuda_sampler_destroy,
                                     ld_cuda_sampler_device_buffer, ld_cuda_sampler_last_timing,
                                     ld_cuda_sampler_sample, ld_cuda_sampler_sample_device,
                                     ld_cuda_sampler_sample_guided_device,
                                     ld_cuda_timing, ld_cuda_upload)

from llamadiff.errors import CudaError, CudaUnavailableError


def device_count():
    """CUDA devices visible to the runtime; 0 without a driver or device (never raises)."""
    return ld_cuda_device_count()


def runtime_version():
    return ld_cuda_runtime_version()


def driver_version():
    return ld_cuda_driver_version()


def device_name(int device=0):
    cdef char buf[256]
    cdef int rc = ld_cuda_device_name(device, buf, sizeof(buf))
    if rc:
        raise CudaError(f"CUDA device {device}: {ld_cuda_error_string(rc).decode()} (error {rc})")
    return buf.decode(errors="replace")


cdef inline int _check(int rc, str what) except -1 nogil:
    if rc != 0:
        with gil:
            raise CudaError(f"CUDA sampler: {what} failed: {ld_cuda_error_string(rc).decode()} (error {rc})")
    return 0


cdef enum:
    MAX_DEVICES = 16      # GPUs one sampler serves (one sampler state each)


cdef class CudaRowSampler(RowSampler):
    """Samples rows on a CUDA device (same results as the CPU RowSampler; see sampler.h).

    Host rows (``sampler="cuda"``) are uploaded to ``device``; with ``in_place=True``
    (``sampler="device"``) the scheduler leaves the logits in llama.cpp's device buffer and
    the rows are sampled there, on whichever GPU holds the output layer (with several GPUs
    llama.cpp puts it on the last one), so only the counters go up and the results come back.
    Raises ``llamadiff.CudaError`` when there is no usable device or a CUDA call fails.
    """
    cdef ld_cuda_sampler * ptr                    # on ``device``
    cdef ld_cuda_sampler * others[MAX_DEVICES]    # on the other devices, made when first needed
    cdef readonly int device
    cdef ld_cuda_params params

    def __init__(self, int device=0, *, bint in_place=False):
        RowSampler.__init__(self)
        self.device = device
        self.in_place = in_place
        self.reads_device = True
        self.gives_plain_prob = True
        cdef int n = ld_cuda_device_count()
        if n == 0:
            raise CudaUnavailableError("no CUDA device is available (no GPU, or no NVIDIA driver)")
        if not 0 <= device < n:
            raise CudaUnavailableError(f"CUDA device {device} does not exist ({n} visible)")
        _check(ld_cuda_sampler_create(device, &self.ptr), f"initialisation on device {device}")

    def __dealloc__(self):
        cdef int i
        if self.ptr != NULL:
            ld_cuda_sampler_destroy(self.ptr)
            self.ptr = NULL
        for i in range(MAX_DEVICES):
            if self.others[i] != NULL:
                ld_cuda_sampler_destroy(self.others[i])
                self.others[i] = NULL

    cdef ld_cuda_sampler * _on(self, int device) except NULL nogil:
        """The sampler state of ``device`` (the logits' GPU)."""
        if device == self.device:
            return self.ptr
        if not 0 <= device < MAX_DEVICES:
            with gil:
                raise CudaError(f"the logits are on CUDA device {device}: more than {MAX_DEVICES} devices")
        cdef int rc
        if self.others[device] == NULL:
            rc = ld_cuda_sampler_create(device, &self.others[device])
            if rc != 0:
                with gil:
                    _check(rc, f"initialisation on device {device}")
        return self.others[device]

    @property
    def name(self):
        return "device" if self.in_place else "cuda"

    cdef int reserve(self, int n_rows, int64_t n_vocab, const SamplingParams * sp) except -1:
        return 0

    cdef void _params(self, const SamplingParams * sp) noexcept nogil:
        self.params.temperature = sp.temperature
        self.params.top_k = sp.top_k
        self.params.top_p = sp.top_p
        self.params.seed = sp.seed
        self.params.skip_token = sp.skip_token
        self.params.plain_prob = sp.plain_prob

    cdef int sample(self, const float * logits, int64_t n_vocab, int n_rows, const SamplingParams * sp,
                    const uint64_t * counters, RowResult * out) except -1 nogil:
        self._params(sp)
        # RowResult and ld_cuda_result have the same layout (int32, 4 x float)
        _check(ld_cuda_sampler_sample(self.ptr, logits, n_vocab, n_rows, &self.params, counters,
                                      <ld_cuda_result *> out), "sampling")
        return 0

    cdef int sample_device(self, const float * logits, int device, int64_t n_vocab, int n_rows,
                           const SamplingParams * sp, const uint64_t * counters,
                           RowResult * out) except -1 nogil:
        cdef ld_cuda_sampler * on = self._on(device)
        self._params(sp)
        _check(ld_cuda_sampler_sample_device(on, logits, n_vocab, n_rows, &self.params, counters,
                                             <ld_cuda_result *> out), "sampling on the device")
        return 0

    cdef int sample_guided(self, const float * logits, int device, int64_t n_vocab, int n_rows,
                           float scale, const SamplingParams * sp, const uint64_t * counters,
                           RowResult * out) except -1 nogil:
        if device < 0:
            return RowSampler.sample_guided(self, logits, device, n_vocab, n_rows, scale, sp, counters, out)
        cdef ld_cuda_sampler * on = self._on(device)
        self._params(sp)
        _check(ld_cuda_sampler_sample_guided_device(on, logits, n_vocab, n_rows, scale, &self.params,
                                                    counters, <ld_cuda_result *> out),
               "guided sampling on the device")
        return 0

    def last_timing(self):
        """(upload_us, kernel_us, direct) of the last call: host-clock phases; direct = pinned input."""
        cdef ld_cuda_timing t
        ld_cuda_sampler_last_timing(self.ptr, &t)
        return t.upload_us, t.kernel_us, bool(t.direct)

    def bench_device(self, logits, int repeats=50, *, float temperature=0.0, int top_k=0,
                     float top_p=1.0, int skip_token=-1):
        """Median microseconds of sampling ``logits`` already on the device (kernel + results
        back), after uploading them once. For benchmarks."""
        import numpy as np
        import time
        cdef const float[:, ::1] view = np.ascontiguousarray(logits, dtype=np.float32)
        cdef int n_rows = view.shape[0]
        cdef int64_t n_vocab = view.shape[1]
        cdef float * d = NULL
        _check(ld_cuda_sampler_device_buffer(self.ptr, <size_t> n_rows * n_vocab, &d), "allocation")
        _check(ld_cuda_upload(self.ptr, d, &view[0, 0], <size_t> n_rows * n_vocab), "upload")
        cdef ld_cuda_params p
        p.temperature = temperature
        p.top_k = top_k
        p.top_p = top_p
        p.seed = 0
        p.skip_token = skip_token
        p.plain_prob = 0
        cdef uint64_t[::1] ctr = np.arange(n_rows, dtype=np.uint64)
        out = np.empty(n_rows * (sizeof(ld_cuda_result) // 4), dtype=np.float32)
        cdef float[::1] ov = out
        times = []
        for _ in range(repeats + 3):
            t0 = time.perf_counter()
            with nogil:
                _check(ld_cuda_sampler_sample_device(self.ptr, d, n_vocab, n_rows, &p, &ctr[0],
                                                     <ld_cuda_result *> &ov[0]), "sampling")
            times.append((time.perf_counter() - t0) * 1e6)
        times = sorted(times[3:])
        return times[len(times) // 2]

# _core_system.pxi: included by _core.pyx (one extension module: llamadiff._core).
# The linked llama.cpp: version, system info, quantisation, devices, threads.

def llama_cpp_version():
    """Version string of the linked llama.cpp library."""
    return C.llama_version().decode()


def system_info():
    """llama.cpp's description of the CPU features and backends it was built with."""
    return C.llama_print_system_info().decode()


_QUANT_TYPES = {
    "f16": C.LLAMA_FTYPE_MOSTLY_F16, "q8_0": C.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_0": C.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q4_k_m": C.LLAMA_FTYPE_MOSTLY_Q4_K_M, "q5_k_m": C.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "q6_k": C.LLAMA_FTYPE_MOSTLY_Q6_K,
}


def quantize(src, dst, str ftype="q8_0", int n_threads=0):
    """Write a quantised copy of a GGUF model with llama.cpp's quantizer.

    ftype: one of ``f16``, ``q8_0``, ``q4_0``, ``q4_k_m``, ``q5_k_m``, ``q6_k``.
    """
    if ftype not in _QUANT_TYPES:
        raise ValueError(f"ftype must be one of {sorted(_QUANT_TYPES)}, got {ftype!r}")
    src = _validate_path(src)
    cdef bytes bsrc = os.fsencode(src)
    cdef bytes bdst = os.fsencode(os.fspath(dst))
    cdef C.llama_model_quantize_params params = C.llama_model_quantize_default_params()
    params.ftype = _QUANT_TYPES[ftype]
    params.nthread = n_threads
    cdef const char * csrc = bsrc
    cdef const char * cdst = bdst
    cdef uint32_t rc
    _take_problems()
    with nogil:
        rc = C.llama_model_quantize(csrc, cdst, &params)
    if rc != 0:
        detail = "; ".join(_take_problems()[-3:]) or f"status {rc}"
        raise ModelLoadError(f"llama.cpp could not quantize {src!r} to {ftype}: {detail}")
    return os.fspath(dst)


def supports_gpu_offload():
    return bool(C.llama_supports_gpu_offload())


_DEVICE_KINDS = {C.GGML_BACKEND_DEVICE_TYPE_CPU: "cpu", C.GGML_BACKEND_DEVICE_TYPE_GPU: "gpu",
                 C.GGML_BACKEND_DEVICE_TYPE_IGPU: "igpu", C.GGML_BACKEND_DEVICE_TYPE_ACCEL: "accel"}


def devices():
    """The devices of the back ends this build of ggml has, as dicts with ``name`` (e.g.
    ``CPU``, ``CUDA0``, ``Vulkan0``), ``description`` and ``kind`` (cpu, gpu, igpu, accel).
    A GPU back end built in but with no usable device (no driver) lists none."""
    cdef size_t i
    cdef C.ggml_backend_dev_t dev
    out = []
    for i in range(C.ggml_backend_dev_count()):
        dev = C.ggml_backend_dev_get(i)
        out.append({"name": C.ggml_backend_dev_name(dev).decode("utf-8", "replace"),
                    "description": C.ggml_backend_dev_description(dev).decode("utf-8", "replace"),
                    "kind": _DEVICE_KINDS.get(C.ggml_backend_dev_kind_of(dev), "other")})
    return out


def _has_gpu_device():
    return any(d["kind"] in ("gpu", "igpu") for d in devices())


def _has_cuda_device():
    """A ggml CUDA device is usable: the back end that captures and replays CUDA graphs."""
    return any(d["name"].startswith("CUDA") for d in devices())


def _usable_cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def physical_cores():
    """Physical cores among the CPUs this process may run on (Linux sysfs topology; elsewhere
    the logical count)."""
    cpus = _usable_cpus()
    cores = set()
    for cpu in cpus:
        base = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(base + "core_id") as f:
                core = f.read().strip()
            with open(base + "physical_package_id") as f:
                package = f.read().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))


def default_threads():
    """The n_threads default: the physical cores, but one logical CPU left free.

    llama.cpp's CPU threads spin-wait for each other; when every usable CPU is taken, anything
    else running (the Python thread that drives generation, an HTTP server, another process)
    preempts one and the others spin: on a busy 2-core machine a decode at 2 threads took 200x
    longer than at 1 (docs/BENCHMARKS.md). Hyper-threads add little to llama.cpp's matrix
    kernels, so the physical cores are the ceiling (llama.cpp's own default); leaving one logical
    CPU free is the margin (llama-cpp-python leaves half). 1 on a 2-core machine, 7 on an
    8-core one without SMT, 8 on an 8-core / 16-thread one.
    """
    logical = len(_usable_cpus())
    return max(1, min(physical_cores(), logical - 1))

"""CUDA support: the GPU row sampler (``sampler.cu`` / ``sampler.h``), compiled into the
extension ``llamadiff.cuda._sampler`` when llamadiff is built with ``LLAMADIFF_CUDA=1``.

``is_built()`` says whether this installation has it, ``device_count()`` how many CUDA devices
the runtime sees (0 without a driver; never raises). ``CudaRowSampler`` is the sampler itself
(``Generator(..., sampler="cuda")`` uses it).
"""

from __future__ import annotations

import os

try:
    from llamadiff.cuda import _sampler
except ImportError as exc:   # not built with CUDA (or the extension cannot load)
    _sampler = None
    _import_error: ImportError | None = exc
else:
    _import_error = None

__all__ = ["is_built", "device_count", "device_name", "runtime_version", "driver_version",
           "CudaRowSampler", "source_dir", "ggml_cuda_built"]


def is_built() -> bool:
    """True when the GPU sampler extension was built (LLAMADIFF_CUDA=1 or LLAMADIFF_CUDA_SAMPLER=1)."""
    return _sampler is not None


def ggml_cuda_built() -> bool:
    """True when the bundled ggml has its CUDA backend (layers can be offloaded)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return any(name.startswith("libggml-cuda.so") for name in os.listdir(here))


def device_count() -> int:
    """CUDA devices the runtime sees; 0 without a CUDA build, driver or device."""
    return _sampler.device_count() if _sampler is not None else 0


def device_name(device: int = 0) -> str:
    _require()
    return _sampler.device_name(device)


def runtime_version() -> int:
    """CUDA runtime version linked into the sampler (e.g. 13000); 0 without a CUDA build."""
    return _sampler.runtime_version() if _sampler is not None else 0


def driver_version() -> int:
    """Version of the installed driver's CUDA API; 0 without a driver or CUDA build."""
    return _sampler.driver_version() if _sampler is not None else 0


def source_dir() -> str:
    """Directory holding sampler.cu / sampler.h (for tests that compile them with nvcc)."""
    return os.path.dirname(os.path.abspath(__file__))


def _require() -> None:
    if _sampler is None:
        from llamadiff.errors import CudaUnavailableError
        raise CudaUnavailableError(
            "llamadiff was built without CUDA; reinstall with LLAMADIFF_CUDA=1 "
            "(see README, 'Building with CUDA')" + (f" [{_import_error}]" if _import_error else ""))


def __getattr__(name):
    if name == "CudaRowSampler":
        _require()
        return _sampler.CudaRowSampler
    raise AttributeError(name)

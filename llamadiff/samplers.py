"""Choosing the row sampler of a Generator:
``sampler="auto" | "device" | "cpu" | "cuda" | "backend"``.

- ``"device"``: every row is sampled where llama.cpp computed the logits, and the logits are
  never copied (vendor/patches/0008): with the output layer on a CUDA GPU, the GPU sampler
  reads llama.cpp's device buffer (only the RNG counters go up and 20 bytes per row come
  back); on the CPU back end, the CPU sampler reads the back end's own buffer. Any family,
  any settings, batches, guidance, the server. Same tokens as ``"cpu"`` on the CPU.
- ``"cpu"``: the vectorised CPU sampler (``llamadiff._sampling.CpuRowSampler``) on the rows
  llama.cpp copied to its host buffer: the reference route.
- ``"cuda"``: the GPU sampler (``llamadiff.cuda.CudaRowSampler``) on those host rows, uploaded
  again. Needs a CUDA build and a device, else ``CudaUnavailableError``.
- ``"backend"``: greedy statistics computed inside llama.cpp's graph by its backend-sampling
  API (``llamadiff._backend``). Greedy only, one sequence at a time.
- ``"auto"`` (default): ``"device"`` when the layers are on a CUDA GPU and this build has the
  GPU sampler; else ``"cuda"`` when a CUDA device is usable (the layers on the CPU); else the
  CPU sampler, in place (``"device"``, which saves llama.cpp's copy of the rows). Quietly
  when no device is visible, with a logged warning when a device is there but the CUDA
  sampler failed to start.

A ``RowSampler`` instance may be passed instead of a name.
"""

from __future__ import annotations

import logging

from llamadiff._sampling import CpuRowSampler, RowSampler
from llamadiff.errors import CudaError, CudaUnavailableError

__all__ = ["SAMPLERS", "make_row_sampler"]

SAMPLERS = ("auto", "device", "cpu", "cuda", "backend")

log = logging.getLogger("llamadiff")


def make_row_sampler(kind, *, n_threads: int = 1, model=None) -> RowSampler:
    """The RowSampler for ``kind`` (see the module docstring)."""
    if isinstance(kind, RowSampler):
        return kind
    if not isinstance(kind, str) or kind not in SAMPLERS:
        raise ValueError(f"unknown sampler {kind!r}; choose one of {list(SAMPLERS)} or pass a RowSampler")
    if kind == "cpu":
        return CpuRowSampler(n_threads)
    if kind == "backend":
        from llamadiff._backend import BackendRowSampler
        mask = getattr(model, "mask_token_id", None)
        return BackendRowSampler(-1 if mask is None else int(mask))
    from llamadiff import cuda
    on_gpu = bool(getattr(model, "on_gpu", False))
    if kind == "device":
        if on_gpu and cuda.is_built() and cuda.device_count() > 0:
            return _cuda_sampler(in_place=True, fallback=CpuRowSampler(n_threads, in_place=True))
        return CpuRowSampler(n_threads, in_place=True)
    if kind == "cuda":
        if not cuda.is_built():
            raise CudaUnavailableError(
                "sampler='cuda' needs a CUDA build of llamadiff: reinstall with LLAMADIFF_CUDA=1 "
                "(see README, 'Building with CUDA'), or use sampler='cpu' / 'auto'")
        return cuda.CudaRowSampler()
    # auto
    if not cuda.is_built():
        return CpuRowSampler(n_threads, in_place=True)
    if cuda.device_count() == 0:
        log.info("llamadiff: no CUDA device is visible; sampling on the CPU")
        return CpuRowSampler(n_threads, in_place=True)
    return _cuda_sampler(in_place=on_gpu, fallback=CpuRowSampler(n_threads, in_place=True))


def _cuda_sampler(*, in_place: bool, fallback: RowSampler) -> RowSampler:
    from llamadiff import cuda
    try:
        return cuda.CudaRowSampler(in_place=in_place)
    except CudaError as exc:
        log.warning("the CUDA sampler is built but unusable (%s); sampling on the CPU", exc)
        return fallback

"""Choosing the row sampler of a Generator: ``sampler="auto" | "cpu" | "cuda" | "backend"``.

- ``"cpu"``: the vectorised CPU sampler (``llamadiff._sampling.CpuRowSampler``).
- ``"cuda"``: the GPU sampler (``llamadiff.cuda.CudaRowSampler``): the block's logits rows are
  uploaded and reduced on the GPU. Needs a CUDA build and a device, else
  ``CudaUnavailableError``.
- ``"backend"``: greedy statistics computed inside llama.cpp's graph, on the device of the
  output layer; the logits never reach the host (``llamadiff._backend``). Greedy only.
- ``"auto"`` (default): ``"cuda"`` when this build has the GPU sampler and a device is
  usable, else ``"cpu"``: quietly when no device is visible, with a logged warning when a
  device is there but the CUDA sampler failed to start.

A ``RowSampler`` instance may be passed instead of a name.
"""

from __future__ import annotations

import logging

from llamadiff._sampling import CpuRowSampler, RowSampler
from llamadiff.errors import CudaError, CudaUnavailableError

__all__ = ["SAMPLERS", "make_row_sampler"]

SAMPLERS = ("auto", "cpu", "cuda", "backend")

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
    if kind == "cuda":
        if not cuda.is_built():
            raise CudaUnavailableError(
                "sampler='cuda' needs a CUDA build of llamadiff: reinstall with LLAMADIFF_CUDA=1 "
                "(see README, 'Building with CUDA'), or use sampler='cpu' / 'auto'")
        return cuda.CudaRowSampler()
    # auto
    if not cuda.is_built():
        return CpuRowSampler(n_threads)
    if cuda.device_count() == 0:
        log.info("llamadiff: no CUDA device is visible; sampling on the CPU")
        return CpuRowSampler(n_threads)
    try:
        return cuda.CudaRowSampler()
    except CudaError as exc:
        log.warning("the CUDA sampler is built but unusable (%s); sampling on the CPU", exc)
        return CpuRowSampler(n_threads)

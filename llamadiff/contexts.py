"""The contexts of one model, kept for reuse between calls (``ContextCache``).

Making a llama.cpp context costs milliseconds to seconds (its KV buffer, its compute graphs), so
a Generator keeps two: one for a single sequence (a KV buffer of ``n_ctx`` positions) and one
whose KV buffer is shared by several sequences (``kv_unified``: batches and serving). Each is
re-made only when a call needs a larger shape than it has, or another memory kind.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from llamadiff._core import Context, Model
from llamadiff.families.base import ContextShape

__all__ = ["ContextCache"]


class ContextCache:
    """The reusable ``single`` and ``shared`` contexts of a model (see the module's text).
    ``on_new_single(ctx)`` is called for each new single-sequence context (a sampler route that
    samples inside it attaches there)."""

    SINGLE, SHARED = "single", "shared"

    def __init__(self, model: Model, *, n_threads: int, on_new_single: Optional[Callable] = None,
                 **context_args):
        self.model = model
        self.n_threads = n_threads
        self._on_new_single = on_new_single
        self._args = context_args          # flash_attn, type_k, type_v
        self._contexts: dict = {self.SINGLE: None, self.SHARED: None}

    @property
    def single(self) -> Optional[Context]:
        """The single-sequence context (None until a call made it)."""
        return self._contexts[self.SINGLE]

    @property
    def shared(self) -> Optional[Context]:
        """The context with a shared KV buffer (None until a call made it)."""
        return self._contexts[self.SHARED]

    def fits(self, ctx: Optional[Context], shape: ContextShape) -> bool:
        """Whether ``ctx`` can serve ``shape``: big enough, and the memory kind a full-diffusion
        body needs (with or without its KV cache)."""
        return (ctx is not None and not ctx.closed and ctx.n_ctx >= shape.n_ctx
                and ctx.n_ubatch >= shape.n_ubatch and ctx.n_seq_max >= shape.n_seq
                and (not self.model.is_diffusion or ctx.has_memory == shape.diffusion_kv))

    def get(self, kind: str, shape: ContextShape) -> tuple:
        """(context, milliseconds spent making it: 0.0 when reused) of ``kind`` for ``shape``."""
        ctx = self._contexts[kind]
        if self.fits(ctx, shape):
            return ctx, 0.0
        if ctx is not None:
            ctx.close()
            self._contexts[kind] = None
        t0 = time.perf_counter()
        shared = kind == self.SHARED
        ctx = Context(self.model, n_ctx=shape.n_ctx, n_batch=shape.n_ubatch, n_ubatch=shape.n_ubatch,
                      n_threads=self.n_threads, causal=False, diffusion_kv=shape.diffusion_kv,
                      **(dict(n_seq_max=shape.n_seq, kv_unified=True) if shared else {}), **self._args)
        self._contexts[kind] = ctx
        if not shared and self._on_new_single is not None:
            self._on_new_single(ctx)
        return ctx, (time.perf_counter() - t0) * 1e3

    def request_abort(self) -> None:
        """Ask a decode in flight on either context to stop early (CPU back end)."""
        for ctx in self._contexts.values():
            if ctx is not None and not ctx.closed:
                ctx.request_abort()

    def close(self) -> None:
        for kind, ctx in self._contexts.items():
            if ctx is not None:
                ctx.close()
            self._contexts[kind] = None

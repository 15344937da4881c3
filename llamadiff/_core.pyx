# cython: language_level=3
# distutils: language = c++
"""Ownership of llama.cpp's native objects: models, contexts, batches, logits views.

``Model`` owns a ``llama_model*``, ``Context`` a ``llama_context*`` plus one reusable
``llama_batch``. Everything that could make llama.cpp abort the process (GGML_ASSERT on
batch sizes, out-of-range token ids) is checked here first and raised as a Python
exception. llama.cpp's log goes to the ``llamadiff.llama`` logger.
"""

import atexit
import collections
import logging
import os
import signal
import struct

from cpython.buffer cimport PyBUF_WRITABLE
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetInterrupt
from libc.stdint cimport int8_t, int32_t, int64_t, uint32_t
from libc.stdlib cimport malloc, free, strtol
from libc.string cimport memcpy, strncmp
from libcpp cimport bool as cbool

from libcpp.vector cimport vector
cimport llamadiff.llama as C
from llamadiff._interrupt cimport (ld_install_sigint_hook, ld_interrupt_pending, ld_interrupt_clear,
                                   ld_interrupt_set_extra, ld_interrupt_fn, ld_rpc_set_timeout_fn)
from llamadiff.llama cimport (llama_model, llama_vocab, llama_context, llama_batch,
                              llama_token, llama_pos, llama_seq_id, ggml_log_level)

from llamadiff.errors import (ModelLoadError, ContextError, DecodeError, DecodeAborted,
                              UnsupportedModelError, ChatTemplateError)
from llamadiff import bodies as _bodies, chat as _chat
from llamadiff.rpc import DEFAULT_TIMEOUT as _RPC_DEFAULT_TIMEOUT, validate_timeout as _rpc_validate_timeout

import numpy as np

# One module, its parts by concern (pyarrow's .pxi style): the declarations in _core.pxd stay
# one ABI for downstream ``cimport llamadiff.core``.

# --------------------------------------------------------------------------- lifetime

cdef class _Resource:
    """Deterministic cleanup shared by Model and Context.

    ``close()`` frees the native handle now, or, while users still hold it (Contexts of a
    Model, NumPy views of a Context's logits), as soon as the last one lets go. Safe to
    call more than once; also a context manager.
    """

    def __cinit__(self):
        self._users = 0
        self._close_requested = False

    cdef void _free(self) noexcept:
        pass

    cdef void _release_user(self) noexcept:
        self._users -= 1
        if self._close_requested and self._users == 0:
            self._free()

    def close(self):
        """Free the native resources (deferred while they are still in use); idempotent."""
        self._close_requested = True
        if self._users == 0:
            self._free()

    @property
    def closed(self):
        """True once close() was called (or the handle was never made)."""
        return self._close_requested or self._is_null()

    def _is_null(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


include "_core_log.pxi"
include "_core_system.pxi"
include "_core_gguf.pxi"
include "_core_rpc.pxi"
include "_core_model.pxi"
include "_core_context.pxi"

# cython: language_level=3
"""Cython declarations of the module that implements llamadiff's core objects.

Downstream Cython code cimports them by their public name, ``from llamadiff.core cimport
Model, Context`` (``core.pxd``; this name keeps working, one ABI), and reaches the raw
llama.cpp handles (``model.ptr``, ``ctx.ptr``) and the no-GIL decode entry point.
"""

from libc.stdint cimport int8_t, int32_t
from libcpp.vector cimport vector
from llamadiff.llama cimport (llama_model, llama_vocab, llama_context, llama_memory_t,
                              llama_batch, llama_token, llama_pos, llama_seq_id)


cdef class _Resource:
    # A native handle freed by close(), or later while users (contexts, NumPy views) hold it.
    cdef int _users
    cdef bint _close_requested
    cdef void _free(self) noexcept
    cdef void _release_user(self) noexcept


cdef class Model(_Resource):
    cdef llama_model * ptr
    cdef const llama_vocab * vocab
    cdef readonly str path
    cdef readonly int n_vocab
    cdef readonly bint vocab_only  # loaded without weights: no hyper-parameters, no decoding
    cdef readonly bint uses_rpc    # layers on ggml RPC servers (llamadiff.rpc)
    cdef readonly bint on_gpu      # layers offloaded to a local GPU device (CUDA, Vulkan)
    cdef readonly double rpc_timeout   # seconds an RPC wait may last without progress
    cdef dict _metadata_cache

    cdef int _check_open(self) except -1
    cdef int _check_token(self, long token) except -1
    cdef int _validate_hparams(self) except -1


cdef class Context(_Resource):
    cdef llama_context * ptr
    cdef llama_memory_t mem       # NULL for architectures without KV memory (LLaDA, Dream)
    cdef readonly Model model
    cdef llama_batch batch
    cdef int32_t batch_capacity
    cdef readonly int32_t n_outputs   # rows of logits produced by the last decode
    cdef readonly int n_vocab
    cdef readonly int n_ctx
    cdef readonly int n_batch
    cdef readonly int n_ubatch
    cdef readonly int n_seq_max
    cdef int _abort_flag
    cdef bint _rpc_sigint           # SIGINT came during the last (RPC) decode
    cdef readonly int block_causal  # block size of block-causal attention, 0: off
    cdef readonly bint logits_on_device   # decodes leave the logits where they were computed
    cdef readonly bint logits_stayed      # the last decode did (no copy to llama.cpp's host buffer)
    cdef vector[float] _logits_stage      # host copy of such logits for a reader that needs one
    cdef bint _stage_valid                # _logits_stage holds the last decode's rows
    cdef readonly bint kv_unified         # one KV stream shared by all sequences
    # diffusion-gemma's decoder (vendor/patches/0012): the next decode's self-conditioning rows
    # (one per batch token) and inverse temperatures (one per output row), written by the
    # sequences' fill() and handed to llama.cpp by decode_batch when sc_pending
    cdef vector[float] sc_embd
    cdef vector[float] sc_inv_temp
    cdef bint sc_pending

    cdef int _check_open(self) except -1
    cdef int check_batch_size(self, int n_tokens) except -1
    cdef int32_t decode_batch(self, int32_t n_tokens) except -32768 nogil
    cdef int raise_for_decode(self, int32_t rc, int n_tokens) except -1
    cdef float * logits_row(self, int32_t i) noexcept nogil
    cdef int set_logits_on_device(self, bint on) noexcept nogil
    cdef const float * step_logits(self, bint device_ok, int * device) except? NULL nogil

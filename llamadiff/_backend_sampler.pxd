# cython: language_level=3
"""The sampler chain of the backend route (_backend_sampler.h: ggml ops inside llama.cpp's graph)."""

from libc.stdint cimport int32_t

from llamadiff.llama cimport llama_sampler


cdef extern from "_backend_sampler.h" nogil:
    llama_sampler * ld_bs_chain_new(int32_t mask_id)

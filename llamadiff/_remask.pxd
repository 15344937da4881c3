# cython: language_level=3
"""Remasking policies: which masked positions of the active block to commit at a step.

A policy is a ``cdef class`` deriving from ``RemaskPolicy`` and overriding the ``nogil``
method ``select``. The block loop calls it once per denoising step; downstream Cython code
can ``from llamadiff._remask cimport RemaskPolicy, StepView`` and plug in its own.
"""

from libc.stdint cimport int32_t


cdef struct StepView:
    int n_masked              # masked positions left in the active block
    const int32_t * positions # their offsets inside the block, ascending
    const int32_t * x0        # predicted token per masked position
    const float * prob        # p(x0) per masked position
    const float * entropy     # entropy of the sampling distribution per masked position
    int n_transfer            # tokens the step schedule asks for (1..n_masked)
    int step                  # 0-based step inside the block
    int steps                 # steps per block
    int block_index           # index of the active block
    int block_length


cdef class RemaskPolicy:
    cdef readonly str name
    # Write the indices (into view.positions) of the positions to commit into `chosen`
    # and return how many (the loop clamps the count to 1..n_masked). Runs without the GIL.
    cdef int select(self, const StepView * view, int32_t * chosen) noexcept nogil


cdef class Sequential(RemaskPolicy):
    pass


cdef class LowConfidenceStatic(RemaskPolicy):
    pass


cdef class LowConfidenceDynamic(RemaskPolicy):
    cdef readonly float threshold


cdef class EntropyBounded(RemaskPolicy):
    cdef readonly float gamma


cdef int top_by_score(const StepView * view, const float * score, bint ascending, int n,
                      int32_t * chosen) noexcept nogil

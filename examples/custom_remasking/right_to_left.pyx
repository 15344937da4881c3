# cython: language_level=3
# distutils: language = c++
"""A remasking policy written in Cython against llamadiff's public .pxd files.

It commits masked positions from the right end of each block, one step at a time,
without the GIL -- the engine calls ``select`` exactly like the built-in policies, for block
diffusion (SDAR) and full diffusion (LLaDA, Dream) alike.
"""

from libc.stdint cimport int32_t

from llamadiff.core cimport Context
from llamadiff.policy cimport RemaskPolicy, StepView


cdef class RightToLeft(RemaskPolicy):
    """Commit the rightmost ``n_transfer`` masked positions."""

    def __init__(self):
        self.name = "right_to_left"

    cdef int select(self, const StepView * view, int32_t * chosen) noexcept nogil:
        cdef int i
        for i in range(view.n_transfer):
            chosen[i] = view.n_masked - 1 - i      # indices into view.positions (ascending)
        return view.n_transfer


def kv_cells(Context ctx):
    """Reads a native field of a llamadiff Context from Cython (shows ``cimport`` of core)."""
    return ctx.n_ctx

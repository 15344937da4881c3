# cython: language_level=3
# distutils: language = c++
"""A remasking policy written in Cython against llamadiff's public .pxd files.

It commits masked positions from the right end of each block, one step at a time,
without the GIL -- the engine calls ``select`` exactly like the built-in policies, for block
diffusion (SDAR) and full diffusion (LLaDA, Dream) alike.

``ReviseOne`` also edits (token editing, as LLaDA2.1 does; block diffusion): at each step it
overwrites the one placed token of the block whose prediction changed with the highest
confidence, and a block takes up to two more steps after its last mask.
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


cdef class ReviseOne(RightToLeft):
    """RightToLeft, plus one edit per step: the placed token whose new prediction is the most
    confident among those that differ from what it holds."""

    def __init__(self):
        RightToLeft.__init__(self)
        self.name = "revise_one"
        self.edits = True          # the engine then gives a row for every position of the block
        self.post_steps = 2

    cdef int edit(self, const StepView * view, int32_t * chosen) noexcept nogil:
        cdef int i, best = -1
        for i in range(view.n_placed):
            if view.placed_x0[i] != view.placed_tokens[i] and (
                    best < 0 or view.placed_prob[i] > view.placed_prob[best]):
                best = i
        if best < 0:
            return 0
        chosen[0] = best           # an index into view.placed
        return 1


def kv_cells(Context ctx):
    """Reads a native field of a llamadiff Context from Cython (shows ``cimport`` of core)."""
    return ctx.n_ctx

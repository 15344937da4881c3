# cython: language_level=3
"""Remasking policies: which masked positions of the active region to commit at a step.

The one extension point of every diffusion family. A policy is a ``cdef class`` deriving
from ``RemaskPolicy`` and overriding the ``nogil`` method ``select``; the engine calls it
once per step of every sequence -- a block of block diffusion (SDAR) or a region of full
diffusion (LLaDA's blocks, Dream's whole sequence). Downstream Cython code does
``from llamadiff.policy cimport RemaskPolicy, StepView`` and plugs in its own.
"""

from libc.stdint cimport int32_t, uint64_t


cdef struct StepView:
    int n_masked              # masked positions left in the active region
    const int32_t * positions # their offsets inside the region, ascending
    const int32_t * x0        # predicted token per masked position
    const float * prob        # p(x0) per masked position (the confidence)
    const float * entropy     # entropy of the sampling distribution per masked position
    const float * margin      # p(top1) - p(top2) per masked position (NaN on the backend route)
    const uint64_t * counters # RNG counter per masked position (for policies that draw)
    uint64_t seed             # the generation's seed
    int n_transfer            # tokens the step schedule asks for (0..n_masked; >= 1 for blocks)
    int step                  # 0-based step inside the region
    int steps                 # scheduled steps of the region
    int block_index           # index of the active region (block)
    int block_length          # positions in the active region
    int region_start          # absolute position of the region's first position
    float * work              # scratch for the policy: room for 2 * n_masked floats
    # Placed tokens of the region, for a policy that edits (RemaskPolicy.edits): the positions
    # committed at earlier steps of this region (prompt tokens excluded), what they hold and
    # what this step's rows predict there. n_placed is 0 for a policy that does not edit.
    int n_placed
    const int32_t * placed         # their offsets inside the region, ascending
    const int32_t * placed_tokens  # the token each one holds now
    const int32_t * placed_x0      # the token this step predicts there
    const float * placed_prob      # its p(x0)
    const float * placed_entropy
    const float * placed_margin


cdef struct Scored:
    float score
    int32_t idx


cdef inline bint by_score(const Scored & a, const Scored & b) noexcept nogil:
    # higher score first, ties to the earlier position (a stable order)
    return a.score > b.score or (a.score == b.score and a.idx < b.idx)


cdef class RemaskPolicy:
    cdef readonly str name
    # True: the step count is not a limit -- the region runs until every position is
    # committed and the last step is not forced (Fast-dLLM's parallel decoding)
    cdef readonly bint adaptive
    # Write the indices (into view.positions) of the positions to commit into `chosen`
    # (room for view.n_masked) and return how many. The engine clamps the count to
    # n_masked (and to >= 1 for block diffusion and adaptive policies). Runs without the GIL.
    cdef int select(self, const StepView * view, int32_t * chosen) noexcept nogil
    # Token editing (LLaDA2.1): a policy with edits = True sees the region's placed tokens in
    # view.placed_* and may overwrite them: edit() writes the indices (into view.placed) of
    # the placed positions to set to view.placed_x0 into `chosen` (room for view.n_placed)
    # and returns how many. After the region's last mask is filled it keeps stepping, up to
    # post_steps steps, and ends at the first step that changes nothing. Runs without the GIL.
    cdef readonly bint edits
    cdef readonly int post_steps
    cdef int edit(self, const StepView * view, int32_t * chosen) noexcept nogil


cdef class Sequential(RemaskPolicy):
    pass


cdef class LowConfidenceStatic(RemaskPolicy):
    pass


cdef class LowConfidenceDynamic(RemaskPolicy):
    cdef readonly float threshold


cdef class EntropyBounded(RemaskPolicy):
    cdef readonly float gamma


cdef class Ranked(RemaskPolicy):
    # the n_transfer best positions by score() (the LLaDA / Dream algorithms), optionally
    # sampled without replacement from softmax(score / alg_temp); higher scores first
    cdef readonly float alg_temp
    cdef float score(self, const StepView * view, int i) noexcept nogil


cdef class Confidence(Ranked):
    pass


cdef class LowEntropy(Ranked):
    pass


cdef class Margin(Ranked):
    pass


cdef class RandomOrder(Ranked):
    pass


cdef class Origin(RemaskPolicy):
    pass


cdef class ParallelPolicy(RemaskPolicy):
    # the most confident positions while accepts(k, p(x0) of the k-th) holds, at least one;
    # adaptive (Fast-dLLM's parallel decoding)
    cdef bint accepts(self, int k, float prob) noexcept nogil


cdef class ParallelThreshold(ParallelPolicy):
    cdef readonly float threshold


cdef class ParallelFactor(ParallelPolicy):
    cdef readonly float factor


cdef class TokenEditing(ParallelThreshold):
    # LLaDA2.1's joint threshold: masks filled as ParallelThreshold, placed tokens edited
    cdef readonly float editing_threshold


cdef int top_by_score(const StepView * view, const float * score, bint ascending, int n,
                      int32_t * chosen) noexcept nogil

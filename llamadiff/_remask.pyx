# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""Built-in remasking policies (SDAR's strategies and the EB-sampler).

Ties are broken towards the leftmost position, so results are deterministic and match
a stable sort: among equal confidences the earlier position is committed first.
"""

from libc.stdint cimport int32_t


cdef int top_by_score(const StepView * view, const float * score, bint ascending, int n,
                      int32_t * chosen) noexcept nogil:
    """Indices of the n best scores (highest, or lowest when ascending), best first.

    Selection sort: a block has few positions (<= 64 in practice), so this beats a heap.
    """
    cdef int i, j, best, t
    cdef int m = view.n_masked
    cdef float a, b
    if n > m:
        n = m
    for i in range(m):
        chosen[i] = i
    for i in range(n):
        best = i
        for j in range(i + 1, m):
            a = score[chosen[j]]
            b = score[chosen[best]]
            if (a < b if ascending else a > b) or (a == b and chosen[j] < chosen[best]):
                best = j
        t = chosen[i]
        chosen[i] = chosen[best]
        chosen[best] = t
    return n


cdef class RemaskPolicy:
    """Base policy: commit the leftmost ``n_transfer`` masked positions."""

    def __init__(self):
        self.name = "sequential"

    cdef int select(self, const StepView * view, int32_t * chosen) noexcept nogil:
        cdef int i
        for i in range(view.n_transfer):
            chosen[i] = i
        return view.n_transfer

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}>"


cdef class Sequential(RemaskPolicy):
    """Left to right: the first ``n_transfer`` masked positions (SDAR ``sequential``)."""


cdef class LowConfidenceStatic(RemaskPolicy):
    """The ``n_transfer`` positions with the highest p(x0) (SDAR ``low_confidence_static``)."""

    def __init__(self):
        self.name = "low_confidence_static"

    cdef int select(self, const StepView * view, int32_t * chosen) noexcept nogil:
        return top_by_score(view, view.prob, False, view.n_transfer, chosen)


cdef class LowConfidenceDynamic(RemaskPolicy):
    """Every position with p(x0) > threshold if they are at least ``n_transfer``, else the
    ``n_transfer`` most confident (SDAR ``low_confidence_dynamic``)."""

    def __init__(self, float threshold=0.85):
        if not (0.0 < threshold <= 1.0):
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.name = "low_confidence_dynamic"
        self.threshold = threshold

    cdef int select(self, const StepView * view, int32_t * chosen) noexcept nogil:
        cdef int i, n = 0
        for i in range(view.n_masked):
            if view.prob[i] > self.threshold:
                chosen[n] = i
                n += 1
        if n >= view.n_transfer:
            return n
        return top_by_score(view, view.prob, False, view.n_transfer, chosen)


cdef class EntropyBounded(RemaskPolicy):
    """EB-sampler: positions by ascending entropy, accepted while the running entropy sum
    stays strictly below ``gamma``; at least one per step."""

    def __init__(self, float gamma=0.35):
        if not gamma > 0:
            raise ValueError(f"eb_gamma must be > 0, got {gamma}")
        self.name = "entropy_bounded"
        self.gamma = gamma

    cdef int select(self, const StepView * view, int32_t * chosen) noexcept nogil:
        cdef int n = top_by_score(view, view.entropy, True, view.n_masked, chosen)
        cdef int i, k = 0
        cdef double total = 0.0
        for i in range(n):
            total += view.entropy[chosen[i]]
            if total >= self.gamma:
                break
            k += 1
        return k if k > 0 else 1


STRATEGIES = {
    "sequential": lambda threshold, eb_gamma: Sequential(),
    "low_confidence_static": lambda threshold, eb_gamma: LowConfidenceStatic(),
    "low_confidence_dynamic": lambda threshold, eb_gamma: LowConfidenceDynamic(threshold),
    "entropy_bounded": lambda threshold, eb_gamma: EntropyBounded(eb_gamma),
}


def make_policy(strategy, *, threshold=0.85, eb_gamma=0.35):
    """A policy object from a strategy name (or an existing RemaskPolicy, returned as is)."""
    if isinstance(strategy, RemaskPolicy):
        return strategy
    try:
        factory = STRATEGIES[strategy]
    except (KeyError, TypeError):
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES)} "
                         "or pass a RemaskPolicy") from None
    return factory(threshold, eb_gamma)

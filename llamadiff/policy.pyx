# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""Built-in remasking policies, one family of classes for every diffusion family.

- SDAR's strategies: ``Sequential``, ``LowConfidenceStatic``, ``LowConfidenceDynamic``, and
  the EB-sampler ``EntropyBounded``.
- The LLaDA / Dream algorithms (upstream ``enum diffusion_algorithm``): ``Confidence``,
  ``LowEntropy``, ``Margin``, ``RandomOrder`` (all ``Ranked``: the step's ``n_transfer`` best
  positions, or a Gumbel-top-k draw with ``alg_temp``) and ``Origin`` (Dream's random transfer).
- Fast-dLLM's parallel decoding: ``ParallelThreshold``, ``ParallelFactor`` (``ParallelPolicy``;
  adaptive: the region runs until no mask is left).
- LLaDA2.1's token editing: ``TokenEditing`` (masks filled as ``ParallelThreshold``; placed
  tokens of the active block overwritten where the prediction changed with enough confidence;
  ``edit`` is the hook any policy can override).

Any of them drives any family. Ties are broken towards the leftmost position, so results
are deterministic and match a stable sort: among equal scores the earlier position wins.
"""

from libc.math cimport log
from libc.stdint cimport int32_t
from libcpp.algorithm cimport sort
from libcpp.vector cimport vector

from llamadiff._kernels cimport ld_uniform, STREAM_RANDOM, STREAM_ORIGIN, STREAM_ALG_TEMP


cdef inline float _gumbel(double u) noexcept nogil:
    if u < 1e-20:
        u = 1e-20
    return <float> (-log(-log(u)))


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


cdef int _sorted_by_prob(const StepView * view, Scored * scored) noexcept nogil:
    """Every masked position, most confident first."""
    cdef int i
    for i in range(view.n_masked):
        scored[i].score = view.prob[i]
        scored[i].idx = i
    sort(scored, scored + view.n_masked, by_score)
    return view.n_masked


cdef inline Scored * _scratch(const StepView * view) noexcept nogil:
    # the sequence's scratch (a policy object may serve several sequences, even threads)
    return <Scored *> view.work


cdef class RemaskPolicy:
    """Base policy: commit the leftmost ``n_transfer`` masked positions."""

    def __init__(self):
        self.name = "sequential"

    cdef int select(self, const StepView * view, int32_t * chosen) noexcept nogil:
        cdef int i
        for i in range(view.n_transfer):
            chosen[i] = i
        return view.n_transfer

    cdef int edit(self, const StepView * view, int32_t * chosen) noexcept nogil:
        # a policy that does not edit (edits = False) is never asked
        return 0

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


cdef class Ranked(RemaskPolicy):
    """The ``n_transfer`` highest ``score()`` positions; with ``alg_temp`` > 0 they are drawn
    without replacement from softmax(score / alg_temp) (Gumbel-top-k on the counter RNG)."""

    def __init__(self, float alg_temp=0.0):
        if not alg_temp >= 0:
            raise ValueError(f"alg_temp must be >= 0, got {alg_temp}")
        self.name = "ranked"
        self.alg_temp = alg_temp

    cdef float score(self, const StepView * view, int i) noexcept nogil:
        return view.prob[i]

    cdef int select(self, const StepView * view, int32_t * chosen) noexcept nogil:
        cdef int i, n = view.n_masked
        cdef int count = view.n_transfer
        cdef Scored * scored = _scratch(view)
        for i in range(n):
            scored[i].score = self.score(view, i)
            scored[i].idx = i
            if self.alg_temp > 0:
                scored[i].score = scored[i].score / self.alg_temp + _gumbel(
                    ld_uniform(view.seed, view.counters[i], STREAM_ALG_TEMP))
        sort(scored, scored + n, by_score)
        if count > n:
            count = n
        for i in range(count):
            chosen[i] = scored[i].idx
        return count


cdef class Confidence(Ranked):
    """Highest p(x0) first (LLaDA's ``low_confidence`` remasking, upstream ``confidence``)."""

    def __init__(self, float alg_temp=0.0):
        Ranked.__init__(self, alg_temp)
        self.name = "confidence"


cdef class LowEntropy(Ranked):
    """Lowest entropy first (Dream's ``entropy``)."""

    def __init__(self, float alg_temp=0.0):
        Ranked.__init__(self, alg_temp)
        self.name = "entropy"

    cdef float score(self, const StepView * view, int i) noexcept nogil:
        return -view.entropy[i]


cdef class Margin(Ranked):
    """Largest p(top1) - p(top2) first (Dream's ``topk_margin``)."""

    def __init__(self, float alg_temp=0.0):
        Ranked.__init__(self, alg_temp)
        self.name = "margin"

    cdef float score(self, const StepView * view, int i) noexcept nogil:
        return view.margin[i]


cdef class RandomOrder(Ranked):
    """A uniformly random order (upstream ``random``)."""

    def __init__(self, float alg_temp=0.0):
        Ranked.__init__(self, alg_temp)
        self.name = "random"

    cdef float score(self, const StepView * view, int i) noexcept nogil:
        return <float> ld_uniform(view.seed, view.counters[i], STREAM_RANDOM)


cdef class Origin(RemaskPolicy):
    """Dream's ``origin``: every masked position is committed with probability
    n_transfer / n_masked (so ``n_transfer`` on average)."""

    def __init__(self):
        self.name = "origin"

    cdef int select(self, const StepView * view, int32_t * chosen) noexcept nogil:
        cdef int i, count = 0
        cdef double p_transfer = <double> view.n_transfer / view.n_masked
        for i in range(view.n_masked):
            if ld_uniform(view.seed, view.counters[i], STREAM_ORIGIN) < p_transfer:
                chosen[count] = i
                count += 1
        return count


cdef class ParallelPolicy(RemaskPolicy):
    """Fast-dLLM's parallel decoding: the positions sorted by p(x0), taken while
    ``accepts(k, p)`` holds for the k-th (at least the most confident one); the region runs
    until no mask is left. Subclasses decide ``accepts``."""

    def __init__(self):
        self.name = "parallel"
        self.adaptive = True

    cdef bint accepts(self, int k, float prob) noexcept nogil:
        return False

    cdef int select(self, const StepView * view, int32_t * chosen) noexcept nogil:
        cdef int i, k = 1
        cdef int n = view.n_masked
        cdef Scored * scored = _scratch(view)
        _sorted_by_prob(view, scored)
        while k < n and self.accepts(k, scored[k].score):
            k += 1
        for i in range(k):
            chosen[i] = scored[i].idx
        return k


cdef class ParallelThreshold(ParallelPolicy):
    """Every position whose p(x0) exceeds ``threshold``, at least the most confident one."""

    def __init__(self, float threshold=0.9):
        if not (0.0 < threshold <= 1.0):
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        ParallelPolicy.__init__(self)
        self.name = "threshold"
        self.threshold = threshold

    cdef bint accepts(self, int k, float prob) noexcept nogil:
        return prob > self.threshold


cdef class ParallelFactor(ParallelPolicy):
    """The k most confident positions for the largest k with c_i >= 1 - factor / (i + 1)
    for every i <= k."""

    def __init__(self, float factor=1.0):
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        ParallelPolicy.__init__(self)
        self.name = "factor"
        self.factor = factor

    cdef bint accepts(self, int k, float prob) noexcept nogil:
        return prob >= 1.0 - self.factor / (k + 2)


cdef class TokenEditing(ParallelThreshold):
    """LLaDA2.1's decoding rule inside the active block (the paper's M2T + T2T, its "joint
    threshold"):

    - fill: every masked position with p(x0) > ``threshold`` is committed; if none is, the
      most confident one;
    - edit: a placed token of the block (not a prompt token) is overwritten when the prediction
      there differs from it and its p(x0) > ``editing_threshold``.

    After the block's last mask is filled it keeps stepping, up to ``max_post_steps`` steps,
    and ends at the first step that changes nothing. ``editing_threshold`` = 0 (or 1) turns
    editing off: the rule is then ``ParallelThreshold`` (LLaDA2.1's speed mode writes 0.0;
    docs/GENERATION.md says why 0 means off here)."""

    def __init__(self, float threshold=0.7, float editing_threshold=0.5, int max_post_steps=16):
        if not (0.0 <= editing_threshold <= 1.0):
            raise ValueError(f"editing_threshold must be in [0, 1] (0 or 1: editing off), got {editing_threshold}")
        if not 0 <= max_post_steps <= 4096:
            raise ValueError(f"max_post_steps must be in [0, 4096], got {max_post_steps}")
        ParallelThreshold.__init__(self, threshold)
        self.name = "token_editing"
        self.editing_threshold = editing_threshold
        self.edits = 0.0 < editing_threshold < 1.0
        self.post_steps = max_post_steps if self.edits else 0

    cdef int edit(self, const StepView * view, int32_t * chosen) noexcept nogil:
        cdef int i, n = 0
        for i in range(view.n_placed):
            if view.placed_x0[i] != view.placed_tokens[i] and view.placed_prob[i] > self.editing_threshold:
                chosen[n] = i
                n += 1
        return n

    def __repr__(self):
        return (f"<TokenEditing threshold={self.threshold:g} editing_threshold={self.editing_threshold:g} "
                f"max_post_steps={self.post_steps}>")


# The policy of each name: block diffusion's strategies, full diffusion's algorithms (upstream's
# numbering) and parallel modes. STRATEGIES, ALGORITHMS and PARALLEL_MODES are their names.
# (a strategy's factory takes the options by name and ignores those of other strategies)
STRATEGY_POLICIES = {
    "sequential": lambda threshold=0.85, eb_gamma=0.35, **_: Sequential(),
    "low_confidence_static": lambda threshold=0.85, eb_gamma=0.35, **_: LowConfidenceStatic(),
    "low_confidence_dynamic": lambda threshold=0.85, eb_gamma=0.35, **_: LowConfidenceDynamic(threshold),
    "entropy_bounded": lambda threshold=0.85, eb_gamma=0.35, **_: EntropyBounded(eb_gamma),
    "token_editing": lambda threshold=0.7, eb_gamma=0.35, editing_threshold=0.5, max_post_steps=16, **_:
        TokenEditing(threshold, editing_threshold, max_post_steps),
}

ALGORITHM_POLICIES = {
    "origin": lambda alg_temp: Origin(),
    "entropy": LowEntropy,
    "margin": Margin,
    "random": RandomOrder,
    "confidence": Confidence,
}
PARALLEL_POLICIES = {
    "threshold": lambda threshold, factor: ParallelThreshold(threshold),
    "factor": lambda threshold, factor: ParallelFactor(factor),
}
STRATEGIES = tuple(STRATEGY_POLICIES)
ALGORITHMS = tuple(ALGORITHM_POLICIES)
PARALLEL_MODES = tuple(PARALLEL_POLICIES)


def make_policy(strategy, *, threshold=None, eb_gamma=0.35, editing_threshold=0.5, max_post_steps=16):
    """A policy object from a block strategy name (or an existing RemaskPolicy, returned as is);
    ``threshold`` None: the strategy's own default (low_confidence_dynamic 0.85, token_editing 0.7)."""
    if isinstance(strategy, RemaskPolicy):
        return strategy
    try:
        factory = STRATEGY_POLICIES[strategy]
    except (KeyError, TypeError):
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES)} "
                         "or pass a RemaskPolicy") from None
    settings = dict(eb_gamma=eb_gamma, editing_threshold=editing_threshold, max_post_steps=max_post_steps)
    if threshold is not None:
        settings["threshold"] = threshold
    return factory(**settings)


def make_full_policy(algorithm="confidence", *, parallel=None, alg_temp=0.0, threshold=0.9, factor=1.0):
    """The policy of a full-diffusion algorithm, or of a parallel mode when one is given."""
    if parallel is not None:
        if algorithm != "confidence":
            raise ValueError("parallel decoding ranks positions by p(x0): use algorithm='confidence'")
        if alg_temp > 0:
            raise ValueError("parallel decoding is deterministic in its choice of positions: alg_temp must be 0")
        try:
            return PARALLEL_POLICIES[parallel](threshold, factor)
        except (KeyError, TypeError):
            raise ValueError(f"unknown parallel mode {parallel!r}; choose None or one of "
                             f"{', '.join(PARALLEL_MODES)}") from None
    try:
        return ALGORITHM_POLICIES[algorithm](alg_temp)
    except (KeyError, TypeError):
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}") from None

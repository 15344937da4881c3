# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""Full diffusion (LLaDA, Dream, RND1: bidirectional over the sequence) as a sequence of the engine.

The sequence is prompt + ``n_generate`` masks. Masks are resolved region by region: with the
block schedule (LLaDA) a region is one block of ``block_length`` positions after the prompt,
with the timestep schedule (Dream, ``eps``) the whole sequence is one region. Each step
predicts every masked position of the region, scores the predictions with the algorithm
(``confidence``: p(x0); ``entropy``: minus the entropy; ``margin``: top-1 minus top-2
probability; ``random``; ``origin``: Dream's random transfer) and commits the best ones --
the algorithms are remasking policies (``llamadiff.policy``), and any policy drives it.

How many positions a step commits:
- block schedule: the region's masks spread over its steps as evenly as possible, earlier
  steps first (LLaDA's ``get_num_transfer_tokens``);
- timestep schedule: ``int(n_masked * (1 - s/t))`` with t, s on ``linspace(1, eps, steps+1)``
  (Dream), everything on the last step;
- ``parallel="threshold"``: every masked position of the region whose p(x0) exceeds the
  threshold, at least one (Fast-dLLM); ``parallel="factor"``: the k most confident positions
  for the largest k with c_i >= 1 - factor / (i + 1) for every i <= k (Fast-dLLM).

Where the logits come from (``cache``):
- ``"none"``: every step decodes the whole sequence from scratch (what upstream
  llama-diffusion-cli does). Exact. On a context with a KV cache (``diffusion_kv=True``, the
  Generator's choice) the cache is cleared first and only the rows of masked positions go
  through the output layer -- upstream computes all of them, which for a 150k vocabulary is
  most of the work.
- ``"prefix"``: at the start of a region the whole sequence is decoded into the KV cache
  (vendor/patches/0004); later steps decode the region and everything after it, attending to
  the cached prefix. Approximate: the prefix's key-values are those of the region's start.
- ``"dual"``: as prefix, but the suffix after the region is cached too and each step decodes
  the region alone. Approximate: prefix and suffix key-values are those of the region's start.

``rng="llama.cpp"`` reproduces upstream's ``diffusion_generate`` draw for draw: llama.cpp's
own sampler chain (top-k, top-p, temperature, dist) seeded like the CLI, std::mt19937 for
the origin/random algorithms and Gumbel noise, and upstream's conventions (temperature 0
samples at temperature 1, ``entropy`` ranks high-entropy positions first, ``margin`` reads the
first two entries of the candidate array, Gumbel noise touches the first row only, a block may
keep masks with ``origin``). It exists to check parity with upstream; the default
(``rng="counter"``) follows the reference implementations (LLaDA ``generate.py``, Dream
``diffusion_generate``) with a thread-independent counter-based RNG.
"""

from libc.math cimport exp, log, pow, logf, INFINITY
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy
from libcpp.algorithm cimport partial_sort
from libcpp.random cimport mt19937, uniform_real_distribution
from libcpp.vector cimport vector

cimport llamadiff.llama as C
from llamadiff._core cimport Context, Model
from llamadiff._sampling cimport RowSampler, check_rows, check_logits
from llamadiff.engine cimport Sequence
from llamadiff.policy cimport RemaskPolicy, Scored, by_score    # by_score: upstream's order too
from llamadiff.policy import ALGORITHMS, make_full_policy     # ALGORITHMS: upstream's numbering

CACHE_MODES = ("none", "prefix", "dual")
DEFAULT_EPS = 1e-3            # Dream's default

cdef enum:
    ALG_ORIGIN = 0
    ALG_ENTROPY = 1
    ALG_MARGIN = 2
    ALG_RANDOM = 3
    ALG_CONFIDENCE = 4

cdef enum:
    CACHE_NONE = 0
    CACHE_PREFIX = 1
    CACHE_DUAL = 2


def schedule_regions(int n_prompt, int n_generate, int block_length, int steps):
    """(start, end, steps) of each region: LLaDA blocks after the prompt (block_length > 0)
    or the whole sequence (block_length == 0, timestep schedule).

    Steps are spread over the blocks as evenly as possible, earlier blocks first (LLaDA asks
    for steps % n_blocks == 0; this reduces to its split when that holds).
    """
    cdef int total = n_prompt + n_generate
    if block_length <= 0:
        return [(0, total, steps)]
    n_blocks = (n_generate + block_length - 1) // block_length
    if steps < n_blocks:
        raise ValueError(f"steps ({steps}) must be at least the number of blocks ({n_blocks} blocks of "
                         f"{block_length} for {n_generate} new tokens): every block needs a step")
    out = []
    for k in range(n_blocks):
        start = n_prompt + k * block_length
        out.append((start, min(start + block_length, total), steps // n_blocks + (1 if k < steps % n_blocks else 0)))
    return out


def check_modes(int block_length, float eps, str cache, parallel, float cfg_scale, str rng,
                bint custom_policy=False):
    """The rules that tie full-diffusion options together (checked when a call's options are
    resolved, and by FullSequence)."""
    if cache not in CACHE_MODES:
        raise ValueError(f"unknown cache mode {cache!r}; choose one of {', '.join(CACHE_MODES)}")
    if rng not in ("counter", "llama.cpp"):
        raise ValueError(f"rng must be 'counter' or 'llama.cpp', got {rng!r}")
    if (block_length > 0) == (eps > 0):
        raise ValueError("give exactly one schedule: block_length (LLaDA-style blocks) or eps "
                         "(Dream-style timesteps)")
    if cfg_scale > 0 and cache != "none":
        raise ValueError("cfg_scale > 0 needs cache='none' (the unconditional pass is not cached)")
    if rng == "llama.cpp" and (cache != "none" or parallel is not None or cfg_scale > 0 or custom_policy):
        raise ValueError("rng='llama.cpp' reproduces llama-diffusion-cli: it needs cache='none', "
                         "no parallel mode, cfg_scale=0 and the algorithm's own policy (the CLI "
                         "has no guidance option)")


cdef class FullSequence(Sequence):
    """One full-diffusion generation: prompt + ``n_generate`` masks, resolved region by region.

    ``policy``: a RemaskPolicy; None takes the one of ``algorithm`` / ``parallel``.
    """
    cdef readonly str algorithm_name, cache_name
    cdef int algorithm, cache_mode
    cdef bint shift, gumbel, timestep, guided
    cdef float eps, cfg_scale, alg_temp
    cdef vector[int] r_start, r_end, r_steps
    cdef vector[int32_t] n_transfer_sched
    cdef readonly long global_step
    cdef int lo, hi                     # this step's decode window [lo, hi)
    cdef bint refresh                   # prefix / dual: this step re-decodes the whole sequence

    def __init__(self, Model model not None, prompt, int n_generate, *, int steps,
                 int block_length=0, float eps=0.0, str algorithm="confidence", str cache="none",
                 parallel=None, float threshold=0.9, float factor=1.0, float cfg_scale=0.0,
                 float alg_temp=0.0, bint add_gumbel_noise=False, bint shift_logits=True,
                 float temperature=0.0, int top_k=0, float top_p=1.0,
                 unsigned long long seed=0, str rng="counter", RemaskPolicy policy=None):
        cdef int n_prompt = len(prompt)
        if n_prompt < 1:
            raise ValueError("the prompt is empty: full diffusion needs at least one prompt token")
        if n_generate < 1 or steps < 1:
            raise ValueError("n_generate and steps must be >= 1")
        for name, value in (("cfg_scale", cfg_scale), ("alg_temp", alg_temp), ("eps", eps)):
            if not value >= 0 or value == INFINITY:        # NaN and infinities too
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        check_modes(block_length, eps, cache, parallel, cfg_scale, rng, policy is not None)
        if rng == "llama.cpp" and not isinstance(self, UpstreamFullSequence):
            raise ValueError("rng='llama.cpp' is UpstreamFullSequence's mode (llama-diffusion-cli's loop)")
        self.cache_mode = CACHE_MODES.index(cache)
        if policy is None:
            policy = make_full_policy(algorithm, parallel=parallel, alg_temp=alg_temp,
                                      threshold=threshold, factor=factor)
        elif policy.edits:
            raise ValueError(f"policy {policy.name!r} edits placed tokens (token editing, LLaDA2.1): that is "
                             "a rule of block diffusion, whose earlier blocks stay frozen; a full-diffusion "
                             "model has no frozen prefix to keep its cache exact")
        self._init_sequence(model, prompt, n_prompt + n_generate, policy, temperature, top_k, top_p, seed)
        self.algorithm = ALGORITHMS.index(algorithm) if algorithm in ALGORITHMS else ALG_CONFIDENCE
        self.algorithm_name = algorithm
        self.cache_name = cache
        self.timestep = eps > 0
        self.eps = eps
        regions = schedule_regions(n_prompt, n_generate, block_length, steps)
        for start, end, n in regions:
            self.r_start.push_back(start)
            self.r_end.push_back(end)
            self.r_steps.push_back(n)
        self.n_regions = len(regions)
        self.region = 0
        self.cfg_scale = cfg_scale
        self.alg_temp = alg_temp
        self.gumbel = add_gumbel_noise
        self.shift = shift_logits
        self.min_commit = 0
        self.block_causal = 0
        rows_cap = max([e - s for s, e, _ in regions])
        self._size_scratch(rows_cap)
        self.n_transfer_sched.resize(max(steps, 1) + 1)
        self.guided = cfg_scale > 0
        if self.guided:
            self.n_seq_ids = 2      # the unconditional pass decodes as a companion sequence
        # LLaDA's Gumbel mode scores x0 by its plain softmax probability: the sampler adds it
        self.sp.plain_prob = self.gumbel and temperature > 0
        # a step decodes the whole sequence at most (twice when guided)
        self.max_step_tokens = self.n_seq_ids * self.n_total
        self.max_out_rows = self.n_seq_ids * rows_cap

    # -- read-only views ----------------------------------------------------------------

    def region_bounds(self, int r):
        return (self.r_start[r], self.r_end[r])

    @property
    def steps_per_block(self):
        return self.steps_per_region

    # -- binding and the decode window --------------------------------------------------------

    cdef int bind(self, Context ctx, int slot, int companion) except -1:
        if ctx.block_causal:
            raise ValueError("full diffusion needs a context without block-causal attention")
        if self.cache_mode != CACHE_NONE and not ctx.has_memory:
            raise ValueError(f"cache={self.cache_name!r} needs a context made with diffusion_kv=True")
        self._check_memory(ctx)
        if self.n_total > ctx.n_ctx:
            raise ValueError(f"prompt ({self.n_prompt}) + generation ({self.n_total - self.n_prompt}) = "
                             f"{self.n_total} positions exceeds n_ctx={ctx.n_ctx}")
        if self.max_step_tokens > ctx.n_ubatch:
            raise ValueError(f"full diffusion decodes the whole sequence at once: prompt + generation "
                             f"({self.n_total}{', twice with guidance' if self.guided else ''}) needs "
                             f"n_ubatch >= {self.max_step_tokens} (it is {ctx.n_ubatch})")
        Sequence.bind(self, ctx, slot, companion)
        if ctx.has_memory:
            C.llama_memory_seq_rm(ctx.mem, slot, -1, -1)
            if companion >= 0:
                C.llama_memory_seq_rm(ctx.mem, companion, -1, -1)
        return 0

    cdef int _check_memory(self, Context ctx) except -1:
        if not ctx.has_memory:
            raise ValueError("full diffusion samples only the rows of masked positions: it needs a "
                             "context made with diffusion_kv=True (rng='llama.cpp' runs without one)")
        return 0

    cdef inline int _row_of(self, int pos) noexcept nogil:
        """Position whose output row predicts ``pos`` (Dream-style models shift by one)."""
        if self.shift and pos > 0:
            return pos - 1
        return pos

    cdef int _window_lo(self, int r) noexcept nogil:
        """First position a cached step must decode: the region (never the prompt), and the
        position before it when rows are shifted."""
        cdef int lo = self.r_start[r]
        if lo < self.n_prompt:
            lo = self.n_prompt
        return lo - 1 if (self.shift and lo > 0) else lo

    cdef int _put_window(self, int n, bint uncond) noexcept nogil:
        """x[lo:hi] into the batch from index n (the unconditional pass: the prompt masked, as
        the companion sequence), logits on the rows that predict masked positions; returns the
        new batch length."""
        cdef int i, p
        cdef int seq_id = self.companion if uncond else self.slot
        for p in range(self.lo, self.hi):
            self.put_seq(n + p - self.lo, p,
                         self.mask_id if (uncond and p < self.n_prompt) else self.x[p], False, seq_id)
        for i in range(self.n_masked):
            self.ctx.batch.logits[n + self._row_of(self.region_start + self.positions[i]) - self.lo] = True
        return n + self.hi - self.lo

    # -- one step -------------------------------------------------------------------------------

    cdef int prepare(self) except -1:
        cdef int r = self.region
        cdef int start = self.r_start[r], end = self.r_end[r]
        cdef int n_steps = self.r_steps[r]
        cdef int i, n_masked, base, rem
        cdef size_t V = self.n_vocab
        if self.step == 0 and not self.timestep:
            # LLaDA: the region's masks spread over its steps, earlier steps first
            n_masked = 0
            for i in range(start, end):
                n_masked += self.x[i] == self.mask_id
            base = n_masked // n_steps
            rem = n_masked % n_steps
            for i in range(n_steps):
                self.n_transfer_sched[i] = base + (1 if i < rem else 0)
        self.region_start = start
        self.region_length = end - start
        self.region_steps = n_steps
        self.n_masked = 0
        for i in range(start, end):
            if self.x[i] == self.mask_id:
                self.positions[self.n_masked] = i - start
                self.counters[self.n_masked] = (<uint64_t> i << 32) | <uint64_t> self.global_step
                self.n_masked += 1
        self.n_transfer = min(self._scheduled_count(r, self.step, self.n_masked), self.n_masked)
        if self.n_transfer < 0:
            self.n_transfer = 0
        self.force_all = not self.policy.adaptive and self.step >= n_steps - 1
        self.skip_commit = False
        self.plain = not self.guided
        self.refresh = False
        if self.cache_mode == CACHE_NONE:
            # exact: the whole sequence from scratch (only the masked rows reach the output layer)
            self.lo, self.hi = 0, self.n_total
            if self.ctx.has_memory:
                C.llama_memory_seq_rm(self.ctx.mem, self.slot, -1, -1)
            if self.companion >= 0:
                C.llama_memory_seq_rm(self.ctx.mem, self.companion, -1, -1)
            return 0
        if self.step == 0:
            # refresh: the whole sequence into the cache, then drop what later steps recompute
            C.llama_memory_seq_rm(self.ctx.mem, self.slot, -1, -1)
            self.lo, self.hi = 0, self.n_total
            self.refresh = True
        else:
            self.lo = self._window_lo(r)
            self.hi = self.n_total if self.cache_mode == CACHE_PREFIX else end
        return 0

    cdef int fill(self, int n) except -1 nogil:
        self.n_rows = self.n_masked
        self.kv_tokens = self.n_total
        n = self._put_window(n, False)
        if self.guided:
            # classifier-free guidance: the unconditional pass rides on the same decode
            n = self._put_window(n, True)
            self.n_rows += self.n_masked
            self.kv_tokens += self.n_total
        return n

    cdef int after_decode(self) except -1 nogil:
        cdef int lo, hi
        if self.cache_mode == CACHE_NONE:
            return 0
        lo = self._window_lo(self.region)
        hi = self.n_total if self.cache_mode == CACHE_PREFIX else self.r_end[self.region]
        C.llama_memory_seq_rm(self.ctx.mem, self.slot, lo, hi if hi < self.n_total else -1)
        return 0

    cdef int sample(self, const float * logits, int device, RowSampler sampler) except -1 nogil:
        # guidance: un + (cfg + 1) * (cond - un); the unconditional rows follow the conditional
        # ones, and the sampler forms the guided rows where the logits are
        sampler.sample_guided(logits + <size_t> self.row_start * self.n_vocab, device, self.n_vocab,
                              self.n_masked, self.cfg_scale + 1.0, &self.sp, self.counters.data(),
                              self.rows.data())
        return 0

    cdef int score(self) except -1 nogil:
        cdef int i
        Sequence.score(self)
        if self.sp.plain_prob:
            # LLaDA: x0 drawn with Gumbel noise at the temperature, the confidence from the
            # plain softmax (of the guided rows, with guidance)
            for i in range(self.n_masked):
                self.prob[i] = self.rows[i].plain_prob
        return 0

    cdef int end_step(self) except -1:
        self.global_step += 1        # the counter-based RNG's step (every region's)
        return Sequence.end_step(self)

    cdef int _scheduled_count(self, int r, int step, int n_masked) noexcept nogil:
        cdef float t, s, p
        cdef int total = self.r_steps[r]
        if step >= total:
            return n_masked     # past the schedule (adaptive policies): everything is due
        if self.timestep:
            # Dream / upstream: float arithmetic as upstream computes it
            t = 1.0 - <float> step / total * (1.0 - self.eps)
            s = 1.0 - <float> (step + 1) / total * (1.0 - self.eps)
            p = (1.0 - s / t) if step < total - 1 else 1.0
            return <int> (n_masked * p)
        return self.n_transfer_sched[step]


cdef class UpstreamFullSequence(FullSequence):
    """``rng="llama.cpp"``: upstream's ``diffusion_generate`` (llama-diffusion-cli) draw for draw,
    for parity checks (see the module doc). Every row of the sequence is decoded and read on
    the host, where upstream's loop edits it in place; llama.cpp's sampler chain picks the
    tokens and this sequence commits them itself."""
    cdef mt19937 rng
    cdef C.llama_sampler * chain
    cdef C.llama_sampler * dist_sampler
    cdef vector[C.llama_token_data] cand
    cdef vector[C.llama_token_data] conf_cand
    cdef vector[Scored] scored

    def __cinit__(self):
        self.chain = NULL
        self.dist_sampler = NULL

    def __dealloc__(self):
        if self.chain != NULL:
            C.llama_sampler_free(self.chain)
        if self.dist_sampler != NULL:
            C.llama_sampler_free(self.dist_sampler)

    def __init__(self, *args, **kwargs):
        """FullSequence's arguments; ``rng`` is "llama.cpp" (the default here)."""
        rng = kwargs.setdefault("rng", "llama.cpp")
        if rng != "llama.cpp":
            raise ValueError(f"UpstreamFullSequence reproduces rng='llama.cpp', not rng={rng!r}")
        FullSequence.__init__(self, *args, **kwargs)
        cdef uint32_t seed = <uint32_t> self.sp.seed      # upstream seeds its samplers with 32 bits
        self.host_logits = True             # upstream's loop edits the rows in place
        self.max_out_rows = self.n_total    # it reads every row
        self.sp.plain_prob = 0              # it samples with llama.cpp's chain, not a RowSampler
        self.rng = mt19937(seed)
        self.chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        if self.sp.top_k > 0:
            C.llama_sampler_chain_add(self.chain, C.llama_sampler_init_top_k(self.sp.top_k))
        if self.sp.top_p < 1.0:
            C.llama_sampler_chain_add(self.chain, C.llama_sampler_init_top_p(self.sp.top_p, 1))
        if self.sp.temperature > 0:
            C.llama_sampler_chain_add(self.chain, C.llama_sampler_init_temp(self.sp.temperature))
        C.llama_sampler_chain_add(self.chain, C.llama_sampler_init_dist(seed))
        self.dist_sampler = C.llama_sampler_init_dist(seed)
        self.cand.resize(self.n_vocab)
        self.conf_cand.resize(self.max_rows)
        self.scored.resize(self.max_rows)

    cdef int _check_memory(self, Context ctx) except -1:
        return 0                            # upstream decodes without a KV memory

    cdef int _put_window(self, int n, bint uncond) noexcept nogil:
        """x[lo:hi] into the batch from index n, a logits row for every position (as upstream)."""
        cdef int p
        for p in range(self.lo, self.hi):
            self.put_seq(n + p - self.lo, p, self.x[p], True, self.slot)
        return n + self.hi - self.lo

    cdef int prepare(self) except -1:
        FullSequence.prepare(self)
        self.force_all = False
        self.skip_commit = True             # sample() commits, upstream's way
        self.plain = False
        return 0

    cdef int fill(self, int n) except -1 nogil:
        self.n_rows = self.hi - self.lo
        self.kv_tokens = self.n_total
        return self._put_window(n, False)

    cdef int sample(self, const float * logits, int device, RowSampler sampler) except -1 nogil:
        # host_logits: the scheduler kept the rows in llama.cpp's host buffer (device -1)
        self._compat_step(<float *> logits + <size_t> self.row_start * self.n_vocab)
        return 0

    cdef int score(self) except -1 nogil:
        return 0

    cdef int end_step(self) except -1:
        self.n_filled = <int> self.step_positions.size()            # commit() did not run
        self.committed_log.push_back(self.n_filled)
        return FullSequence.end_step(self)

    cdef int _compat_step(self, float * logits) except -1 nogil:
        """One step exactly as upstream's diffusion_generate does it (see the module doc):
        ``logits`` holds every row of the sequence, modified in place like upstream."""
        cdef size_t V = self.n_vocab
        cdef int i, count, pos, sel
        cdef int r = self.region
        cdef int step = self.step
        cdef int n_masked = self.n_masked
        cdef int64_t j
        cdef double noise
        cdef float p_transfer, entropy
        cdef uniform_real_distribution[double] unif_d = uniform_real_distribution[double](0.0, 1.0)
        cdef uniform_real_distribution[float] unif_f = uniform_real_distribution[float](0.0, 1.0)
        cdef C.llama_token_data_array cur
        cdef C.llama_token_data_array conf_arr
        self.step_positions.clear()
        self.step_tokens.clear()
        for i in range(n_masked):
            check_logits(logits + <size_t> self._row_of(self.region_start + self.positions[i]) * V, self.n_vocab)
        if self.gumbel and self.sp.temperature > 0:
            for j in range(self.n_vocab):      # upstream perturbs the first row only
                noise = unif_d(self.rng)
                if noise < 1e-20:
                    noise = 1e-20
                logits[j] = exp(logits[j]) / pow(-log(noise), self.sp.temperature)
        if self.algorithm == ALG_ORIGIN:
            count = self._scheduled_count(r, step, n_masked)
            p_transfer = <float> count / n_masked
            for i in range(n_masked):
                if unif_f(self.rng) < p_transfer:
                    pos = self.region_start + self.positions[i]
                    self._compat_sample(logits + <size_t> self._row_of(pos) * V, &cur)
                    self._compat_commit(pos, cur.data[cur.selected].id)
            return 0
        for i in range(n_masked):
            pos = self.region_start + self.positions[i]
            self._compat_sample(logits + <size_t> self._row_of(pos) * V, &cur)
            self.x0[i] = cur.data[cur.selected].id
            if self.algorithm == ALG_ENTROPY:
                entropy = 0.0
                for j in range(<int64_t> cur.size):
                    entropy += cur.data[j].p * logf(cur.data[j].p + 1e-10)
                self.scored[i].score = -entropy
            elif self.algorithm == ALG_MARGIN:
                self.scored[i].score = (cur.data[0].p - cur.data[1].p) if cur.size > 1 else cur.data[0].p
            elif self.algorithm == ALG_RANDOM:
                self.scored[i].score = unif_f(self.rng)
            else:
                self.scored[i].score = cur.data[cur.selected].p
            self.scored[i].idx = i
        count = self._scheduled_count(r, step, n_masked)
        if count > n_masked:
            count = n_masked
        if count <= 0:
            return 0
        if self.alg_temp == 0:
            partial_sort(self.scored.begin(), self.scored.begin() + count,
                         self.scored.begin() + n_masked, by_score)
            for i in range(count):
                sel = self.scored[i].idx
                self._compat_commit(self.region_start + self.positions[sel], self.x0[sel])
            return 0
        for i in range(n_masked):
            self.conf_cand[i].id = i
            self.conf_cand[i].logit = self.scored[i].score / self.alg_temp
            self.conf_cand[i].p = 0.0
        conf_arr.data = self.conf_cand.data()
        conf_arr.size = n_masked
        conf_arr.selected = -1
        conf_arr.sorted = False
        for i in range(count):
            C.llama_sampler_apply(self.dist_sampler, &conf_arr)
            sel = <int> conf_arr.selected
            self._compat_commit(self.region_start + self.positions[sel], self.x0[sel])
            self.conf_cand[sel].p = 0.0
            conf_arr.selected = -1
        return 0

    cdef void _compat_commit(self, int pos, int32_t token) noexcept nogil:
        if self.x[pos] == self.mask_id:
            self.step_positions.push_back(pos)
            self.step_tokens.push_back(token)
        self.x[pos] = token

    cdef void _compat_sample(self, const float * row, C.llama_token_data_array * cur) noexcept nogil:
        cdef int64_t t
        for t in range(self.n_vocab):
            self.cand[t].id = <int32_t> t
            self.cand[t].logit = row[t]
            self.cand[t].p = 0.0
        cur.data = self.cand.data()
        cur.size = self.n_vocab
        cur.selected = -1
        cur.sorted = False
        C.llama_sampler_apply(self.chain, cur)

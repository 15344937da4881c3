# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""The full-diffusion denoising loop (LLaDA, Dream, RND1: bidirectional over the sequence).

The sequence is prompt + ``n_generate`` masks. Masks are resolved region by region: with the
block schedule (LLaDA) a region is one block of ``block_length`` positions after the prompt,
with the timestep schedule (Dream, ``eps``) the whole sequence is one region. Each step
predicts every masked position of the region, scores the predictions with the algorithm
(``confidence``: p(x0); ``entropy``: minus the entropy; ``margin``: top-1 minus top-2
probability; ``random``; ``origin``: Dream's random transfer) and commits the best ones.

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

from libc.math cimport exp, log, pow, expf, logf, isnan, INFINITY
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy
from libcpp.algorithm cimport partial_sort, sort
from libcpp.random cimport mt19937, uniform_real_distribution
from libcpp.vector cimport vector
from cpython.exc cimport PyErr_CheckSignals

cimport llamadiff.llama as C
from llamadiff._core cimport Context, Model
from llamadiff._sampling cimport SamplingParams, RowResult, RowSampler, check_rows, check_logits
from llamadiff._block import StepInfo


cdef extern from "_kernels.h" nogil:
    void ld_row_argmax(const float * row, int64_t n, int64_t skip, float * max_out, int64_t * arg_out)
    void ld_row_softmax_stats(const float * row, int64_t n, int64_t skip, float m, float s,
                              double * z_out, double * e_out)
    double ld_uniform(uint64_t seed, uint64_t a, uint64_t b)
    float ld_expf(float x)


# upstream's numbering (enum diffusion_algorithm)
ALGORITHMS = ("origin", "entropy", "margin", "random", "confidence")
CACHE_MODES = ("none", "prefix", "dual")
PARALLEL_MODES = ("threshold", "factor")
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

cdef enum:
    PAR_SCHEDULE = 0
    PAR_THRESHOLD = 1
    PAR_FACTOR = 2

# RNG streams of the counter RNG (third key of ld_uniform)
cdef enum:
    STREAM_SAMPLE = 0       # used by the row sampler
    STREAM_RANDOM = 1       # random confidences
    STREAM_ORIGIN = 2       # origin's transfer coin
    STREAM_ALG_TEMP = 3     # sampling positions with alg_temp


cdef struct Scored:
    float conf
    int32_t idx


cdef inline bint _by_conf(const Scored & a, const Scored & b) noexcept nogil:
    # upstream's order: higher confidence first, ties to the earlier position
    return a.conf > b.conf or (a.conf == b.conf and a.idx < b.idx)


cdef inline float _gumbel(double u) noexcept nogil:
    if u < 1e-20:
        u = 1e-20
    return <float> (-log(-log(u)))


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


cdef class FullDiffusion:
    """State of one full-diffusion generation on a Context.

    Drive it with ``run_region()`` until ``done``; ``tokens`` holds the whole sequence.
    """
    cdef Context ctx
    cdef Model model
    cdef vector[int32_t] x
    cdef readonly int n_prompt, n_total, n_regions, region, mask_id, steps
    cdef readonly str algorithm_name, cache_name
    cdef int algorithm, cache_mode, parallel, n_vocab, n_threads, rows_cap, rows_lo
    cdef bint shift, gumbel, timestep, compat
    cdef float eps, cfg_scale, alg_temp, threshold, factor
    cdef SamplingParams sp
    cdef vector[int] r_start, r_end, r_steps
    # scratch, sized once: no allocation inside the loop
    cdef vector[int32_t] positions, x0, chosen, n_transfer
    cdef vector[float] conf, key
    cdef vector[RowResult] res
    cdef vector[uint64_t] counters
    cdef readonly RowSampler sampler
    cdef vector[float] rowbuf
    cdef vector[Scored] scored
    # llama-diffusion-cli compatible mode
    cdef mt19937 rng
    cdef C.llama_sampler * chain
    cdef C.llama_sampler * dist_sampler
    cdef vector[C.llama_token_data] cand
    cdef vector[C.llama_token_data] conf_cand
    # telemetry
    cdef readonly long n_decode, n_decode_tokens, global_step
    cdef readonly double decode_us, sample_us
    cdef vector[int32_t] committed_log
    cdef readonly list steps_per_region

    def __cinit__(self):
        self.chain = NULL
        self.dist_sampler = NULL

    def __dealloc__(self):
        if self.chain != NULL:
            C.llama_sampler_free(self.chain)
        if self.dist_sampler != NULL:
            C.llama_sampler_free(self.dist_sampler)

    def __init__(self, Context ctx not None, prompt, int n_generate, *, int steps,
                 int block_length=0, float eps=0.0, str algorithm="confidence", str cache="none",
                 parallel=None, float threshold=0.9, float factor=1.0, float cfg_scale=0.0,
                 float alg_temp=0.0, bint add_gumbel_noise=False, bint shift_logits=True,
                 float temperature=0.0, int top_k=0, float top_p=1.0,
                 unsigned long long seed=0, str rng="counter", int n_threads=1,
                 RowSampler sampler=None):
        cdef int i
        self.ctx = ctx
        self.model = ctx.model
        mask = self.model.mask_token_id
        if mask is None:
            raise ValueError("the model has no mask token (tokenizer.ggml.mask_token_id)")
        self.mask_id = mask
        self.n_vocab = self.model.n_vocab
        self.n_prompt = len(prompt)
        if self.n_prompt < 1:
            raise ValueError("the prompt is empty: full diffusion needs at least one prompt token")
        if n_generate < 1:
            raise ValueError("n_generate must be >= 1")
        self.n_total = self.n_prompt + n_generate
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        if cache not in CACHE_MODES:
            raise ValueError(f"unknown cache mode {cache!r}; choose one of {', '.join(CACHE_MODES)}")
        if parallel is not None and parallel not in PARALLEL_MODES:
            raise ValueError(f"unknown parallel mode {parallel!r}; choose None or one of {', '.join(PARALLEL_MODES)}")
        if rng not in ("counter", "llama.cpp"):
            raise ValueError(f"rng must be 'counter' or 'llama.cpp', got {rng!r}")
        if (block_length > 0) == (eps > 0):
            raise ValueError("give exactly one schedule: block_length (LLaDA-style blocks) or eps "
                             "(Dream-style timesteps)")
        if eps > 0 and not eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if cfg_scale < 0 or isnan(cfg_scale):
            raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")
        if alg_temp < 0 or isnan(alg_temp):
            raise ValueError(f"alg_temp must be >= 0, got {alg_temp}")
        if not (0.0 < threshold <= 1.0):
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        if temperature < 0 or not (0.0 < top_p <= 1.0) or top_k < 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0")
        self.algorithm = ALGORITHMS.index(algorithm)
        self.algorithm_name = algorithm
        self.cache_mode = CACHE_MODES.index(cache)
        self.cache_name = cache
        self.parallel = PAR_SCHEDULE if parallel is None else 1 + PARALLEL_MODES.index(parallel)
        self.compat = rng == "llama.cpp"
        if self.parallel != PAR_SCHEDULE and self.algorithm != ALG_CONFIDENCE:
            raise ValueError("parallel decoding ranks positions by p(x0): use algorithm='confidence'")
        if self.parallel != PAR_SCHEDULE and alg_temp > 0:
            raise ValueError("parallel decoding is deterministic in its choice of positions: alg_temp must be 0")
        if cfg_scale > 0 and self.cache_mode != CACHE_NONE:
            raise ValueError("cfg_scale > 0 needs cache='none' (the unconditional pass is not cached)")
        if self.compat and (self.cache_mode != CACHE_NONE or self.parallel != PAR_SCHEDULE or cfg_scale > 0):
            raise ValueError("rng='llama.cpp' reproduces llama-diffusion-cli: it needs cache='none', "
                             "no parallel mode and cfg_scale=0 (the CLI has no guidance option)")
        if self.cache_mode != CACHE_NONE and not ctx.has_memory:
            raise ValueError(f"cache={cache!r} needs a context made with diffusion_kv=True")
        if self.n_total > ctx.n_ctx:
            raise ValueError(f"prompt ({self.n_prompt}) + generation ({n_generate}) = {self.n_total} "
                             f"positions exceeds n_ctx={ctx.n_ctx}")
        if self.n_total > ctx.n_ubatch:
            raise ValueError(f"full diffusion decodes the whole sequence at once: prompt + generation "
                             f"({self.n_total}) needs n_ubatch >= {self.n_total} (it is {ctx.n_ubatch})")
        self.timestep = eps > 0
        self.eps = eps
        self.steps = steps
        regions = schedule_regions(self.n_prompt, n_generate, block_length, steps)
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
        self.threshold = threshold
        self.factor = factor
        self.n_threads = n_threads
        self.x.resize(self.n_total, self.mask_id)
        for i in range(self.n_prompt):
            self.model._check_token(prompt[i])
            self.x[i] = prompt[i]
        self.sp.temperature = temperature
        self.sp.top_k = top_k
        self.sp.top_p = top_p
        self.sp.seed = seed
        self.sp.skip_token = self.mask_id

        self.rows_cap = max([e - s for s, e, _ in regions])
        self.positions.resize(self.rows_cap)
        self.x0.resize(self.rows_cap)
        self.chosen.resize(self.rows_cap)
        self.conf.resize(self.rows_cap)
        self.key.resize(self.rows_cap)
        self.res.resize(self.rows_cap)
        self.counters.resize(self.rows_cap)
        self.scored.resize(self.rows_cap)
        self.n_transfer.resize(max(steps, 1) + 1)
        # the row sampler: CPU by default, or the GPU one of llamadiff.cuda (host logits)
        self.sampler = sampler if sampler is not None else RowSampler(n_threads)
        if not self.sampler.uses_host_logits:
            raise ValueError("full diffusion samples llama.cpp's host logits: use the 'cpu' or 'cuda' sampler")
        self.sampler.reserve(self.rows_cap, self.n_vocab, &self.sp)
        if cfg_scale > 0:
            self.rowbuf.resize(<size_t> self.rows_cap * self.n_vocab)   # the conditional rows
        if self.compat:
            self._init_compat(temperature, top_k, top_p, <uint32_t> seed)
        self.steps_per_region = []

    cdef _init_compat(self, float temperature, int top_k, float top_p, uint32_t seed):
        self.rng = mt19937(seed)
        self.chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        if top_k > 0:
            C.llama_sampler_chain_add(self.chain, C.llama_sampler_init_top_k(top_k))
        if top_p < 1.0:
            C.llama_sampler_chain_add(self.chain, C.llama_sampler_init_top_p(top_p, 1))
        if temperature > 0:
            C.llama_sampler_chain_add(self.chain, C.llama_sampler_init_temp(temperature))
        C.llama_sampler_chain_add(self.chain, C.llama_sampler_init_dist(seed))
        self.dist_sampler = C.llama_sampler_init_dist(seed)
        self.cand.resize(self.n_vocab)
        self.conf_cand.resize(self.rows_cap)

    # -- read-only views ----------------------------------------------------------------

    @property
    def done(self):
        return self.region >= self.n_regions

    @property
    def tokens(self):
        return [self.x[i] for i in range(self.n_total)]

    def region_bounds(self, int r):
        return (self.r_start[r], self.r_end[r])

    def committed_per_step(self):
        return [self.committed_log[i] for i in range(self.committed_log.size())]

    # -- decoding ---------------------------------------------------------------------------

    cdef inline int _row_of(self, int pos) noexcept nogil:
        """Position whose output row predicts ``pos`` (Dream-style models shift by one)."""
        if self.shift and pos > 0:
            return pos - 1
        return pos

    cdef int _decode(self, int lo, int hi, int n_masked, bint all_logits, bint uncond) except -1:
        """Decode x[lo:hi]; logits for the rows that predict the masked positions (or all rows)."""
        cdef int i, j = 0, p, n = hi - lo
        cdef int32_t rc
        cdef int64_t t0 = C.llama_time_us()
        for i in range(n):
            p = lo + i
            self.ctx.batch.token[i] = self.mask_id if (uncond and p < self.n_prompt) else self.x[p]
            self.ctx.batch.pos[i] = p
            self.ctx.batch.n_seq_id[i] = 1
            self.ctx.batch.seq_id[i][0] = 0
            self.ctx.batch.logits[i] = all_logits
        if not all_logits:
            for i in range(n_masked):
                self.ctx.batch.logits[self._row_of(self.positions[i]) - lo] = True
        with nogil:
            rc = self.ctx.decode_batch(n)
        self.decode_us += C.llama_time_us() - t0
        self.n_decode += 1
        self.n_decode_tokens += n
        self.ctx.raise_for_decode(rc, n)
        return 0

    cdef int _window_lo(self, int r) noexcept nogil:
        """First position a cached step must decode: the region (never the prompt), and the
        position before it when rows are shifted."""
        cdef int lo = self.r_start[r]
        if lo < self.n_prompt:
            lo = self.n_prompt
        return lo - 1 if (self.shift and lo > 0) else lo

    cdef const float * _forward(self, int r, int step, int n_masked) except NULL:
        """Logits rows for the masked positions. Sets ``rows_lo``: -1 when row i belongs to
        positions[i] (only those rows were computed), else the position of row 0 (a context
        without memory computes every row: llama_decode runs llama_encode)."""
        cdef int lo, hi, i
        cdef size_t V = self.n_vocab
        cdef float * cond
        cdef const float * unc
        cdef float scale
        if self.cache_mode == CACHE_NONE:
            # exact: the whole sequence from scratch. With a KV cache (cleared first) only the
            # rows of masked positions reach the output layer; without one llama.cpp computes
            # every row (what upstream does)
            self.ctx.memory_clear()
            self._decode(0, self.n_total, n_masked, False, False)
            self.rows_lo = 0 if self.ctx.mem == NULL else -1
            if self.cfg_scale <= 0:
                return C.llama_get_logits(self.ctx.ptr)
            # classifier-free guidance: un + (cfg + 1) * (cond - un), prompt masked in `un`
            cond = self.rowbuf.data()
            self._gather(C.llama_get_logits(self.ctx.ptr), n_masked, cond)
            self.ctx.memory_clear()
            self._decode(0, self.n_total, n_masked, False, True)
            unc = C.llama_get_logits(self.ctx.ptr)
            scale = self.cfg_scale + 1.0
            with nogil:
                for i in range(n_masked):
                    self._combine(cond + i * V, self._row_ptr(unc, i), scale)
            self.rows_lo = -1
            return cond
        lo = self._window_lo(r)
        hi = self.n_total if self.cache_mode == CACHE_PREFIX else self.r_end[r]
        if step == 0:
            # refresh: the whole sequence into the cache, then drop what later steps recompute
            self.ctx.memory_clear()
            self._decode(0, self.n_total, n_masked, False, False)
        else:
            self._decode(lo, hi, n_masked, False, False)
        C.llama_memory_seq_rm(self.ctx.mem, 0, lo, hi if hi < self.n_total else -1)
        self.rows_lo = -1
        return C.llama_get_logits(self.ctx.ptr)

    cdef inline const float * _row_ptr(self, const float * logits, int i) noexcept nogil:
        """Row of logits that predicts positions[i]."""
        if self.rows_lo < 0:
            return logits + <size_t> i * self.n_vocab
        return logits + <size_t> (self._row_of(self.positions[i]) - self.rows_lo) * self.n_vocab

    cdef void _gather(self, const float * logits, int n_masked, float * out) noexcept nogil:
        cdef int i
        for i in range(n_masked):
            memcpy(out + <size_t> i * self.n_vocab, self._row_ptr(logits, i), self.n_vocab * sizeof(float))

    cdef void _combine(self, float * cond, const float * unc, float scale) noexcept nogil:
        cdef int64_t j
        for j in range(self.n_vocab):
            cond[j] = unc[j] + scale * (cond[j] - unc[j])

    # -- choosing what to commit ------------------------------------------------------------

    cdef int _scheduled_count(self, int r, int step, int n_masked) noexcept nogil:
        cdef float t, s, p
        cdef int total = self.r_steps[r]
        if self.timestep:
            # Dream / upstream: float arithmetic as upstream computes it
            t = 1.0 - <float> step / total * (1.0 - self.eps)
            s = 1.0 - <float> (step + 1) / total * (1.0 - self.eps)
            p = (1.0 - s / t) if step < total - 1 else 1.0
            return <int> (n_masked * p)
        return self.n_transfer[step]

    cdef int _parallel_count(self, int n_masked) noexcept nogil:
        """Fast-dLLM parallel decoding over positions sorted by confidence (self.scored)."""
        cdef int k = 1
        if self.parallel == PAR_THRESHOLD:
            while k < n_masked and self.scored[k].conf > self.threshold:
                k += 1
            return k
        while k < n_masked and self.scored[k].conf >= 1.0 - self.factor / (k + 2):
            k += 1
        return k

    cdef int _score(self, const float * logits, int r, int n_masked) except -1 nogil:
        """x0 and a confidence per masked position (counter RNG, reference semantics)."""
        cdef int i
        cdef const float * row
        cdef float m
        cdef int64_t arg
        cdef double z, e
        cdef int run, n
        for i in range(n_masked):
            self.counters[i] = (<uint64_t> self.positions[i] << 32) | <uint64_t> self.global_step
        if self.rows_lo < 0:
            self.sampler.sample(logits, self.n_vocab, n_masked, &self.sp, self.counters.data(),
                                self.res.data())
        else:
            # every row was computed: sample each run of consecutive masked positions
            run = 0
            while run < n_masked:
                n = 1
                while run + n < n_masked and self.positions[run + n] == self.positions[run] + n:
                    n += 1
                self.sampler.sample(self._row_ptr(logits, run), self.n_vocab, n, &self.sp,
                                    self.counters.data() + run, self.res.data() + run)
                run += n
        check_rows(self.res.data(), n_masked)
        for i in range(n_masked):
            self.x0[i] = self.res[i].token
            row = self._row_ptr(logits, i)
            if self.algorithm == ALG_CONFIDENCE:
                if self.gumbel and self.sp.temperature > 0:
                    # LLaDA: x0 drawn with Gumbel noise at the temperature, confidence from
                    # the plain softmax
                    ld_row_argmax(row, self.n_vocab, self.mask_id, &m, &arg)
                    ld_row_softmax_stats(row, self.n_vocab, self.mask_id, m, 1.0, &z, &e)
                    self.conf[i] = <float> (ld_expf(row[self.x0[i]] - m) / z)
                else:
                    self.conf[i] = self.res[i].prob
            elif self.algorithm == ALG_ENTROPY:
                self.conf[i] = -self.res[i].entropy
            elif self.algorithm == ALG_MARGIN:
                self.conf[i] = self.res[i].margin
            elif self.algorithm == ALG_RANDOM:
                self.conf[i] = <float> ld_uniform(self.sp.seed, self.counters[i], STREAM_RANDOM)
            else:
                self.conf[i] = 0.0
        return 0

    cdef int _select(self, int r, int step, int n_masked) noexcept nogil:
        """Fill self.chosen with the indices (into positions) to commit; return their count."""
        cdef int i, count
        cdef double p_transfer
        cdef bint last = step >= self.r_steps[r] - 1 and self.parallel == PAR_SCHEDULE
        if self.algorithm == ALG_ORIGIN:
            count = self._scheduled_count(r, step, n_masked)
            p_transfer = <double> count / n_masked
            count = 0
            for i in range(n_masked):
                if last or ld_uniform(self.sp.seed, self.counters[i], STREAM_ORIGIN) < p_transfer:
                    self.chosen[count] = i
                    count += 1
            return count
        for i in range(n_masked):
            self.scored[i].conf = self.conf[i]
            self.scored[i].idx = i
            if self.alg_temp > 0:
                # sampling without replacement from softmax(conf / alg_temp): Gumbel-top-k
                self.scored[i].conf = self.conf[i] / self.alg_temp + _gumbel(
                    ld_uniform(self.sp.seed, self.counters[i], STREAM_ALG_TEMP))
        sort(self.scored.begin(), self.scored.begin() + n_masked, _by_conf)
        if self.parallel != PAR_SCHEDULE:
            count = self._parallel_count(n_masked)
        elif last:
            count = n_masked
        else:
            count = self._scheduled_count(r, step, n_masked)
        if count > n_masked:
            count = n_masked
        for i in range(count):
            self.chosen[i] = self.scored[i].idx
        return count

    # -- the llama-diffusion-cli compatible step -----------------------------------------------

    cdef int _compat_step(self, int r, int step, int n_masked) except -1:
        """One step exactly as upstream's diffusion_generate does it (see the module doc)."""
        cdef size_t V = self.n_vocab
        cdef float * logits
        cdef const float * row
        cdef int i, count, pos, sel
        cdef int64_t j
        cdef double noise
        cdef float p_transfer, entropy, u
        cdef uniform_real_distribution[double] unif_d = uniform_real_distribution[double](0.0, 1.0)
        cdef uniform_real_distribution[float] unif_f = uniform_real_distribution[float](0.0, 1.0)
        cdef C.llama_token_data_array cur
        cdef C.llama_token_data_array conf_arr
        self._decode(0, self.n_total, n_masked, True, False)
        logits = C.llama_get_logits(self.ctx.ptr)     # every row, modified in place like upstream
        cdef int64_t t0 = C.llama_time_us()
        with nogil:
            for i in range(n_masked):
                check_logits(logits + <size_t> self._row_of(self.positions[i]) * V, self.n_vocab)
            if self.gumbel and self.sp.temperature > 0:
                for j in range(self.n_vocab):      # upstream perturbs the first row only
                    noise = unif_d(self.rng)
                    if noise < 1e-20:
                        noise = 1e-20
                    logits[j] = exp(logits[j]) / pow(-log(noise), self.sp.temperature)
            if self.algorithm == ALG_ORIGIN:
                count = self._scheduled_count(r, step, n_masked)
                p_transfer = <float> count / n_masked
                count = 0
                for i in range(n_masked):
                    if unif_f(self.rng) < p_transfer:
                        pos = self.positions[i]
                        self._compat_sample(logits + <size_t> self._row_of(pos) * V, &cur)
                        self.x[pos] = cur.data[cur.selected].id
                        count += 1
            else:
                for i in range(n_masked):
                    pos = self.positions[i]
                    self._compat_sample(logits + <size_t> self._row_of(pos) * V, &cur)
                    self.x0[i] = cur.data[cur.selected].id
                    if self.algorithm == ALG_ENTROPY:
                        entropy = 0.0
                        for j in range(<int64_t> cur.size):
                            entropy += cur.data[j].p * logf(cur.data[j].p + 1e-10)
                        self.scored[i].conf = -entropy
                    elif self.algorithm == ALG_MARGIN:
                        self.scored[i].conf = (cur.data[0].p - cur.data[1].p) if cur.size > 1 else cur.data[0].p
                    elif self.algorithm == ALG_RANDOM:
                        self.scored[i].conf = unif_f(self.rng)
                    else:
                        self.scored[i].conf = cur.data[cur.selected].p
                    self.scored[i].idx = i
                count = self._scheduled_count(r, step, n_masked)
                if count > n_masked:
                    count = n_masked
                if count < 0:
                    count = 0
                if count > 0:
                    if self.alg_temp == 0:
                        partial_sort(self.scored.begin(), self.scored.begin() + count,
                                     self.scored.begin() + n_masked, _by_conf)
                        for i in range(count):
                            self.x[self.positions[self.scored[i].idx]] = self.x0[self.scored[i].idx]
                    else:
                        for i in range(n_masked):
                            self.conf_cand[i].id = i
                            self.conf_cand[i].logit = self.scored[i].conf / self.alg_temp
                            self.conf_cand[i].p = 0.0
                        conf_arr.data = self.conf_cand.data()
                        conf_arr.size = n_masked
                        conf_arr.selected = -1
                        conf_arr.sorted = False
                        for i in range(count):
                            C.llama_sampler_apply(self.dist_sampler, &conf_arr)
                            sel = <int> conf_arr.selected
                            self.x[self.positions[sel]] = self.x0[sel]
                            self.conf_cand[sel].p = 0.0
                            conf_arr.selected = -1
        self.sample_us += C.llama_time_us() - t0
        return count

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

    # -- the loop ------------------------------------------------------------------------------

    def run_region(self, callback=None):
        """Denoise the next region (block) to the end. Returns False when the callback asked
        to stop."""
        if self.done:
            raise RuntimeError("generation is complete")
        cdef int r = self.region
        cdef int start = self.r_start[r], end = self.r_end[r]
        cdef int n_steps = self.r_steps[r]
        cdef int step = 0, i, n_masked, count, base, rem
        cdef const float * logits
        cdef int64_t t0
        cdef bint keep_going = True
        cdef bint scheduled = self.parallel == PAR_SCHEDULE
        if not self.timestep:
            n_masked = 0
            for i in range(start, end):
                n_masked += self.x[i] == self.mask_id
            base = n_masked // n_steps
            rem = n_masked % n_steps
            for i in range(n_steps):
                self.n_transfer[i] = base + (1 if i < rem else 0)
        while True:
            if scheduled and step >= n_steps:
                break
            n_masked = 0
            for i in range(start, end):
                if self.x[i] == self.mask_id:
                    self.positions[n_masked] = i
                    n_masked += 1
            if n_masked == 0:
                break
            if self.compat:
                count = self._compat_step(r, step, n_masked)
                picked = None
            else:
                logits = self._forward(r, step, n_masked)
                t0 = C.llama_time_us()
                with nogil:
                    self._score(logits, r, n_masked)
                    count = self._select(r, step, n_masked)
                    for i in range(count):
                        self.x[self.positions[self.chosen[i]]] = self.x0[self.chosen[i]]
                self.sample_us += C.llama_time_us() - t0
                picked = [self.chosen[i] for i in range(count)]
            self.committed_log.push_back(count)
            step += 1
            self.global_step += 1
            if callback is not None:
                if picked is None:      # compatible mode: report what changed
                    changed = [i for i in range(n_masked) if self.x[self.positions[i]] != self.mask_id]
                else:
                    changed = picked
                info = StepInfo(r, step - 1, [self.positions[j] for j in changed],
                                [self.x[self.positions[j]] for j in changed], n_masked - len(changed))
                if callback(info) is False:
                    keep_going = False
                    break
            PyErr_CheckSignals()
        if keep_going:
            self.steps_per_region.append(step)
            self.region += 1
        return keep_going

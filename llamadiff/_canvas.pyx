# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""Canvas diffusion (Google's DiffusionGemma) as a sequence of the engine.

Semantics (transformers' ``DiffusionGemmaGenerationMixin.generate``; tests/diffusion_gemma_reference.py
is its NumPy float64 version): after the prompt, blocks of ``C`` positions (the canvas) are
generated one at a time. A block starts as ``C`` uniform-random tokens (there is no mask token)
and is denoised in at most ``N`` steps; step ``k`` (0-based) of a block

  1. decodes the canvas in the decoder phase (bidirectional over the cached prefix and the whole
     canvas, the self-conditioning input made from the previous step's distribution), at the
     temperature ``T = t_min + (t_max - t_min) (N - k) / N``;
  2. draws every position from softmax(z / T) (top_k / top_p filter the draw; top_k=1 is greedy)
     and takes its argmax and the entropy of softmax(z / T);
  3. accepts the positions in order of ascending entropy while the sum of the entropies before a
     position is <= ``entropy_bound`` (the lowest always); every other position gets a fresh
     uniform token;
  4. stops the block when the argmax canvas equals each of the last ``stability`` ones and the
     mean entropy is < ``confidence``.

The block's output is its last argmax. It is committed by the encoder phase (causal, writing the
KV cache) before the next block's first step; generation ends after a block holding an
end-of-generation token. The decoder's cells are dropped after each decode, so the KV cache holds
the prompt and the committed blocks only: a step costs the canvas, never the prefix.
``cache=False`` is the reference behaviour without the cache: every step encodes the prefix
(prompt and committed blocks) again from an empty memory; both give the same tokens.

The phase is llama.cpp's causal-attention switch (vendor/patches/0012). The self-conditioning
input ``softmax(z / T) @ E * sqrt(d)`` is computed in the graph next to the logits and comes back
as the decode's embeddings (n_embd floats per position, handed to the next decode through
``Context.sc_embd``); the probabilities themselves never leave the device.

Draws use the counter RNG: the draw at step k of position p uses counter (p << 16) | 2k, the
uniform token entering step k (k = 0: the block's first canvas) (p << 16) | (2k + 1), stream
``STREAM_CANVAS``.
"""

from libc.math cimport log
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.string cimport memcpy, memset
from libcpp.algorithm cimport sort
from libcpp.vector cimport vector

cimport llamadiff.llama as C
from llamadiff._core cimport Context, Model
from llamadiff._kernels cimport ld_row_argmax, ld_row_softmax_stats, ld_row_draw, ld_uniform
from llamadiff._sampling cimport Candidate, RowResult, SamplingParams, RowSampler, sample_row, check_logits
from llamadiff.engine cimport Sequence


# the counter RNG's stream of the uniform canvas tokens (beside _kernels.pxd's STREAM_*)
cdef enum:
    STREAM_CANVAS = 4

# the most steps a block may take (the step index lives in 15 bits of a counter)
MAX_CANVAS_STEPS = 4096


cdef struct Ranked:
    double entropy
    int32_t index


cdef inline bint _lower(const Ranked & a, const Ranked & b) noexcept nogil:
    # ascending entropy; ties by position (as a stable sort of the positions would)
    return a.entropy < b.entropy or (a.entropy == b.entropy and a.index < b.index)


cdef inline int32_t _uniform_token(uint64_t seed, int64_t pos, int slot, int64_t n_vocab) noexcept nogil:
    cdef int64_t t = <int64_t> (ld_uniform(seed, (<uint64_t> pos << 16) | <uint64_t> slot, STREAM_CANVAS) * n_vocab)
    return <int32_t> (t if t < n_vocab else n_vocab - 1)


def uniform_tokens(unsigned long long seed, positions, int slot, int n_vocab):
    """The uniform canvas tokens of ``positions`` at counter slot ``slot`` (2k + 1: entering step
    k), as a sequence draws them (for references and tests)."""
    return [int(_uniform_token(seed, p, slot, n_vocab)) for p in positions]


cdef class CanvasSequence(Sequence):
    """One DiffusionGemma generation: ``n_generate`` new tokens after ``prompt``, in whole canvases
    of ``canvas_length`` (the last block is not cut), at most ``steps`` steps per canvas."""
    cdef readonly int canvas_length, steps, stability
    cdef readonly float t_min, t_max, entropy_bound, confidence
    cdef readonly long n_accepted     # positions the entropy bound accepted, over all steps
    cdef int n_embd, start
    cdef bint greedy, filtered, commit_pending, sc_valid, stopped
    cdef readonly bint use_cache
    cdef float inv_temp
    cdef vector[int32_t] canvas, argmax, draw, history, eog
    cdef vector[double] row_entropy
    cdef vector[Ranked] ranked
    cdef vector[float] sc
    cdef vector[Candidate] scratch
    cdef int n_history, n_step_accepted

    def __init__(self, Model model not None, prompt, int n_generate, int canvas_length, int steps, *,
                 float t_min=0.4, float t_max=0.8, float entropy_bound=0.1, int stability=1,
                 float confidence=0.005, int top_k=0, float top_p=1.0, unsigned long long seed=0,
                 eog_tokens=(), bint cache=True):
        cdef int i
        if canvas_length < 1 or n_generate < 1:
            raise ValueError("canvas_length and n_generate must be >= 1")
        if not 1 <= steps <= MAX_CANVAS_STEPS:
            raise ValueError(f"steps must be in 1..{MAX_CANVAS_STEPS}, got {steps}")
        if not (0.0 < t_min <= t_max):
            raise ValueError(f"need 0 < t_min <= t_max, got t_min={t_min}, t_max={t_max}")
        if entropy_bound < 0 or confidence < 0 or stability < 0:
            raise ValueError("entropy_bound, confidence and stability must be >= 0")
        if top_k < 0 or not (0.0 < top_p <= 1.0):
            raise ValueError("need top_k >= 0 and 0 < top_p <= 1")
        if len(prompt) < 1:
            raise ValueError("canvas diffusion needs a prompt of at least one token (the canvas "
                             "attends to the encoded prompt)")
        model._check_open()
        self.model = model
        self.n_vocab = model.n_vocab
        self.n_embd = model.n_embd
        self.mask_id = -1
        self.policy = None
        self.n_prompt = len(prompt)
        cdef int n_blocks = (n_generate + canvas_length - 1) // canvas_length
        self.n_total = self.n_prompt + n_blocks * canvas_length
        self.x.resize(self.n_total, 0)
        for i in range(self.n_prompt):
            model._check_token(prompt[i])
            self.x[i] = prompt[i]
        for t in eog_tokens:
            self.eog.push_back(int(t))
        self.canvas_length, self.steps, self.stability = canvas_length, steps, stability
        self.t_min, self.t_max, self.entropy_bound, self.confidence = t_min, t_max, entropy_bound, confidence
        self.greedy = top_k == 1
        self.use_cache = cache
        self.filtered = not self.greedy and ((0 < top_k < self.n_vocab) or top_p < 1.0)
        self.sp.temperature = 1.0
        self.sp.top_k = top_k
        self.sp.top_p = top_p
        self.sp.seed = seed
        self.sp.skip_token = -1
        self.sp.plain_prob = 0
        self.region = 0
        self.n_regions = n_blocks
        self.min_commit = 1
        self.canvas.resize(canvas_length)
        self.argmax.resize(canvas_length)
        self.draw.resize(canvas_length)
        self.row_entropy.resize(canvas_length)
        self.ranked.resize(canvas_length)
        self.history.resize(<size_t> max(stability, 1) * canvas_length)
        self.sc.resize(<size_t> canvas_length * self.n_embd)
        if self.filtered:
            self.scratch.resize(self.n_vocab)
        self.step_positions.reserve(canvas_length)
        self.step_tokens.reserve(canvas_length)
        self.max_rows = canvas_length
        self.max_out_rows = canvas_length
        # every row is this sequence's own (not plain) and is read on the host
        self.plain = False
        self.skip_commit = True
        self.host_logits = True
        self._new_block()

    def region_bounds(self, int r):
        cdef int s = self.n_prompt + r * self.canvas_length
        return (s, s + self.canvas_length)

    @property
    def canvas_tokens(self):
        """The canvas as it enters the next step (uniform tokens where nothing is accepted)."""
        return [self.canvas[i] for i in range(self.canvas_length)]

    cdef _new_block(self):
        """The block's first canvas (uniform tokens), no self-conditioning, an empty history."""
        cdef int j
        self.start = self.n_prompt + self.region * self.canvas_length
        for j in range(self.canvas_length):
            self.canvas[j] = _uniform_token(self.sp.seed, self.start + j, 1, self.n_vocab)
        self.sc_valid = False
        self.n_history = 0
        self.stopped = False

    cdef int _set_phase(self, bint encoder) except -1:
        """llama.cpp's phase switch: causal attention (the encoder, KV written, no embeddings) or
        not (the decoder over the canvas, its self-conditioning inputs out as embeddings)."""
        C.llama_set_causal_attn(self.ctx.ptr, encoder)
        C.llama_set_embeddings(self.ctx.ptr, not encoder)
        return 0

    cdef int bind(self, Context ctx, int slot, int companion) except -1:
        cdef int64_t t0
        if self.model.architecture != "diffusion-gemma":
            raise ValueError("canvas diffusion runs diffusion-gemma models")
        if not ctx.has_memory:
            raise ValueError("canvas diffusion needs a context with a KV cache")
        if ctx.n_ubatch < self.canvas_length:
            raise ValueError(f"n_ubatch ({ctx.n_ubatch}) must be at least the canvas length "
                             f"({self.canvas_length}): a step decodes the whole canvas at once")
        if self.n_total > ctx.n_ctx:
            raise ValueError(f"prompt ({self.n_prompt}) + generation rounded up to whole canvases "
                             f"({self.n_total} positions) exceeds n_ctx={ctx.n_ctx}")
        Sequence.bind(self, ctx, slot, companion)
        self.max_step_tokens = self.canvas_length
        if ctx.sc_embd.size() < <size_t> ctx.n_ubatch * self.n_embd:
            ctx.sc_embd.resize(<size_t> ctx.n_ubatch * self.n_embd)
            ctx.sc_inv_temp.resize(ctx.n_ubatch)
        t0 = C.llama_time_us()
        C.llama_memory_seq_rm(ctx.mem, slot, -1, -1)
        ctx.set_block_causal(0)
        self._set_phase(True)
        try:
            if self.use_cache:
                self.prefill_range(0, self.n_prompt, ctx.n_batch)
        finally:
            self._set_phase(False)
        self.prefill_us = C.llama_time_us() - t0
        self.prefill_decode_us = self.decode_us
        self.commit_pending = False
        return 0

    cdef int prepare(self) except -1:
        # the finished block's commit pass (the encoder over its argmax), or without the cache the
        # whole prefix from an empty memory; then back to the decoder
        if self.commit_pending or not self.use_cache:
            if not self.use_cache:
                C.llama_memory_seq_rm(self.ctx.mem, self.slot, -1, -1)
            self._set_phase(True)
            try:
                self.prefill_range(self.start - self.canvas_length if self.use_cache else 0, self.start,
                                   self.ctx.n_batch)
            finally:
                self._set_phase(False)
            self.commit_pending = False
        return 0

    cdef int fill(self, int n) except -1 nogil:
        cdef int j
        cdef size_t d = self.n_embd
        cdef float * dst = self.ctx.sc_embd.data() + <size_t> n * d
        self.inv_temp = 1.0 / (self.t_min + (self.t_max - self.t_min) * (self.steps - self.step) / <float> self.steps)
        for j in range(self.canvas_length):
            self.put(n + j, self.start + j, self.canvas[j], True)
            self.ctx.sc_inv_temp[self.row_start + j] = self.inv_temp
        if self.sc_valid:
            memcpy(dst, self.sc.data(), <size_t> self.canvas_length * d * sizeof(float))
        else:
            memset(dst, 0, <size_t> self.canvas_length * d * sizeof(float))
        self.ctx.sc_pending = True
        self.n_rows = self.canvas_length
        self.n_masked = self.canvas_length
        self.kv_tokens = self.start + self.canvas_length
        self.region_start = self.start
        self.region_length = self.canvas_length
        self.region_steps = self.steps
        return n + self.canvas_length

    cdef int after_decode(self) except -1 nogil:
        cdef const float * embd = C.llama_get_embeddings(self.ctx.ptr)
        # the decoder's cells go: the cache keeps the prompt and the committed blocks
        C.llama_memory_seq_rm(self.ctx.mem, self.slot, self.start, -1)
        if embd == NULL:
            with gil:
                from llamadiff.errors import DecodeError
                raise DecodeError("the decoder pass gave no self-conditioning rows (embeddings)")
        memcpy(self.sc.data(), embd + <size_t> self.row_start * self.n_embd,
               <size_t> self.canvas_length * self.n_embd * sizeof(float))
        self.sc_valid = True
        return 0

    cdef int sample(self, const float * logits, int device, RowSampler sampler) except -1 nogil:
        cdef int j, i, Cn = self.canvas_length
        cdef int64_t V = self.n_vocab, arg
        cdef const float * row
        cdef float m, s = self.inv_temp
        cdef double z, e, acc, mean = 0.0
        cdef uint64_t counter
        cdef RowResult res
        cdef SamplingParams sp = self.sp
        cdef bint stable, same
        if device >= 0 or logits == NULL:
            with gil:
                raise RuntimeError("canvas diffusion samples its rows on the host")
        sp.temperature = 1.0 / s
        for j in range(Cn):
            row = logits + <size_t> (self.row_start + j) * V
            ld_row_argmax(row, V, -1, &m, &arg)
            ld_row_softmax_stats(row, V, -1, m, s, &z, &e)
            self.argmax[j] = <int32_t> arg
            self.row_entropy[j] = log(z) - e / z
            if not (self.row_entropy[j] - self.row_entropy[j] == 0.0):
                check_logits(row, V)    # NaN or inf among the logits: a DecodeError naming it
            mean += self.row_entropy[j]
            counter = (<uint64_t> (self.start + j) << 16) | <uint64_t> (2 * self.step)
            if self.greedy:
                self.draw[j] = <int32_t> arg
            elif self.filtered:
                sample_row(row, V, &sp, counter, self.scratch.data(), &res)
                self.draw[j] = res.token
            else:
                self.draw[j] = <int32_t> ld_row_draw(row, V, -1, m, s, ld_uniform(sp.seed, counter, 0) * z, arg)
            self.ranked[j].entropy = self.row_entropy[j]
            self.ranked[j].index = j
        mean /= Cn
        # accept by ascending entropy while the entropies before a position sum to <= the bound
        sort(self.ranked.begin(), self.ranked.end(), _lower)
        acc = 0.0
        self.n_step_accepted = 0
        for i in range(Cn):
            if acc > self.entropy_bound:
                break
            acc += self.ranked[i].entropy
            self.n_step_accepted += 1
        for j in range(Cn):
            self.canvas[j] = _uniform_token(sp.seed, self.start + j, 2 * self.step + 3, V)
        for i in range(self.n_step_accepted):
            j = self.ranked[i].index
            self.canvas[j] = self.draw[j]
        self.n_accepted += self.n_step_accepted
        # the stop rule: the argmax equal to each of the last `stability` ones, low mean entropy
        stable = self.n_history == self.stability
        i = 0
        while stable and i < self.n_history:
            same = True
            for j in range(Cn):
                if self.history[<size_t> i * Cn + j] != self.argmax[j]:
                    same = False
                    break
            stable = same
            i += 1
        if self.stability > 0:
            if self.n_history == self.stability:
                # drop the oldest
                memcpy(self.history.data(), self.history.data() + Cn,
                       <size_t> (self.stability - 1) * Cn * sizeof(int32_t))
                self.n_history -= 1
            memcpy(self.history.data() + <size_t> self.n_history * Cn, self.argmax.data(), Cn * sizeof(int32_t))
            self.n_history += 1
        self.stopped = stable and mean < self.confidence
        return 0

    cdef int end_step(self) except -1:
        cdef int j, Cn = self.canvas_length
        self.step_region, self.step_index, self.step_left = self.region, self.step, Cn - self.n_step_accepted
        # what a step "commits" (StepInfo, --visual): the canvas's argmax as it settles
        self.step_positions.clear()
        self.step_tokens.clear()
        for j in range(Cn):
            self.step_positions.push_back(self.start + j)
            self.step_tokens.push_back(self.argmax[j])
        self.committed_log.push_back(self.n_step_accepted)
        self.step += 1
        self.region_done = self.stopped or self.step >= self.steps
        if not self.region_done:
            return 0
        for j in range(Cn):
            self.x[self.start + j] = self.argmax[j]
        self.steps_per_region.append(self.step)
        self.step = 0
        if self._holds_eog():
            self.n_regions = self.region + 1
        self.region += 1
        if self.region < self.n_regions:
            self.commit_pending = True
            self._new_block()
        return 1

    cdef bint _holds_eog(self):
        cdef int j
        cdef size_t k
        for j in range(self.canvas_length):
            for k in range(self.eog.size()):
                if self.argmax[j] == self.eog[k]:
                    return True
        return False

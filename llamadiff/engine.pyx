# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""The diffusion engine: ``Scheduler`` and the abstract ``Sequence`` (see engine.pxd).

Every generation -- one prompt or many, block or full diffusion -- runs here: a single
prompt is a scheduler with one sequence. Sequences join (``add``: checked, prefilled) and
leave (``remove``: KV cells freed at once) between steps, so a caller can keep the slots
busy with queued prompts (continuous batching).

Sequences share a step only when their attention agrees: the block-causal mask of the
context is one setting, so block-diffusion sequences of one scheduler share a block length,
and full-diffusion sequences need a context without it.
"""

from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.string cimport memcpy
from cpython.exc cimport PyErr_CheckSignals
from cpython.ref cimport PyObject

cimport llamadiff.llama as C
from llamadiff._core cimport Context, Model
from llamadiff._sampling cimport SamplingParams, RowResult, RowSampler, check_rows
from llamadiff.policy cimport RemaskPolicy, StepView


class StepInfo:
    """What a step callback sees after each denoising step of a sequence."""
    __slots__ = ("block_index", "step", "positions", "tokens", "n_masked_left", "index", "block_start",
                 "block_end")

    def __init__(self, block_index, step, positions, tokens, n_masked_left, index=None, block_start=None,
                 block_end=None):
        self.block_index = block_index
        self.step = step
        self.positions = positions          # absolute positions committed at this step
        self.tokens = tokens                # the tokens committed there
        self.n_masked_left = n_masked_left  # masks left in the active block (region)
        self.index = index                  # the prompt's index in a batch (None: one prompt)
        self.block_start = block_start      # the active block's absolute positions [start, end)
        self.block_end = block_end

    def __repr__(self):
        return (f"StepInfo(block={self.block_index}, step={self.step}, committed={len(self.positions)}, "
                f"left={self.n_masked_left})")


cdef inline bint _same_sampling(const SamplingParams * a, const SamplingParams * b) noexcept nogil:
    return (a.temperature == b.temperature and a.top_k == b.top_k and a.top_p == b.top_p
            and a.seed == b.seed and a.skip_token == b.skip_token and a.plain_prob == b.plain_prob)


cdef int _bad_choice(RemaskPolicy policy, int index, int n_masked) except -1 with gil:
    raise ValueError(f"remasking policy {policy.name!r} chose index {index}: indices go into "
                     f"view.positions (0..{n_masked - 1})")


cdef int _bad_edit(RemaskPolicy policy, int index, int n_placed) except -1 with gil:
    raise ValueError(f"remasking policy {policy.name!r} edited index {index}: indices go into "
                     f"view.placed (0..{n_placed - 1})")


cdef class Sequence:
    """One generation in a scheduler slot (abstract: ``llamadiff._block.BlockSequence``,
    ``llamadiff._full.FullSequence``).

    ``tokens`` is the whole sequence (prompt, committed tokens, mask ids elsewhere); a
    region (block) that finished never changes again.
    """

    def __cinit__(self):
        self.slot = -1
        self.companion = -1
        self.n_seq_ids = 1
        self.steps_per_region = []

    cdef int _init_sequence(self, Model model, prompt, int n_total, RemaskPolicy policy,
                            float temperature, int top_k, float top_p, unsigned long long seed) except -1:
        cdef int i
        if temperature < 0 or not (0.0 < top_p <= 1.0) or top_k < 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0")
        self.model = model
        model._check_open()
        mask = model.mask_token_id
        if mask is None:
            raise ValueError("the model has no mask token (tokenizer.ggml.mask_token_id)")
        self.mask_id = mask
        self.n_vocab = model.n_vocab
        self.policy = policy
        self.n_prompt = len(prompt)
        self.n_total = n_total
        self.x.resize(n_total, self.mask_id)
        for i in range(self.n_prompt):
            model._check_token(prompt[i])
            self.x[i] = prompt[i]
        self.sp.temperature = temperature
        self.sp.top_k = top_k
        self.sp.top_p = top_p
        self.sp.seed = seed
        self.sp.skip_token = self.mask_id
        self.sp.plain_prob = 0
        return 0

    cdef int _size_scratch(self, int n_rows) except -1:
        """Room for a step of n_rows masked positions: no allocation inside the loop."""
        self.max_rows = n_rows
        self.positions.resize(n_rows)
        self.x0.resize(n_rows)
        self.chosen.resize(n_rows)
        self.prob.resize(n_rows)
        self.entropy.resize(n_rows)
        self.margin.resize(n_rows)
        self.counters.resize(n_rows)
        self.row_counters.resize(n_rows)
        self.rows.resize(n_rows)
        self.step_positions.reserve(n_rows)
        self.step_tokens.reserve(n_rows)
        self.work.resize(2 * <size_t> n_rows)
        self.placed.resize(n_rows)
        self.placed_tokens.resize(n_rows)
        self.placed_x0.resize(n_rows)
        self.edit_chosen.resize(n_rows)
        self.placed_prob.resize(n_rows)
        self.placed_entropy.resize(n_rows)
        self.placed_margin.resize(n_rows)
        self.max_out_rows = n_rows
        return 0

    # -- read-only views ----------------------------------------------------------------

    @property
    def done(self):
        return self.region >= self.n_regions

    @property
    def tokens(self):
        """The whole sequence so far (prompt, committed tokens, mask ids elsewhere)."""
        return [self.x[i] for i in range(self.n_total)]

    def tokens_between(self, int start, int end):
        """Tokens at positions [start, end) (clamped to the sequence)."""
        start = max(0, start)
        end = min(end, self.n_total)
        return [self.x[i] for i in range(start, end)]

    def committed_per_step(self):
        return [self.committed_log[i] for i in range(self.committed_log.size())]

    def last_step(self):
        """(positions, tokens) the last step committed, absolute positions."""
        return ([self.step_positions[i] for i in range(self.step_positions.size())],
                [self.step_tokens[i] for i in range(self.step_tokens.size())])

    def region_bounds(self, int r):
        """[start, end) of region (block) r."""
        raise NotImplementedError

    # -- helpers for subclasses ------------------------------------------------------------

    cdef void put(self, int b, int32_t pos, int32_t token, bint want_logits) noexcept nogil:
        self.put_seq(b, pos, token, want_logits, self.slot)

    cdef void put_seq(self, int b, int32_t pos, int32_t token, bint want_logits, int seq_id) noexcept nogil:
        self.ctx.batch.token[b] = token
        self.ctx.batch.pos[b] = pos
        self.ctx.batch.n_seq_id[b] = 1
        self.ctx.batch.seq_id[b][0] = seq_id
        self.ctx.batch.logits[b] = want_logits

    cdef int account_decode(self, int n, double us) noexcept nogil:
        self.n_decode += 1
        self.n_decode_tokens += n
        self.decode_us += us
        return 0

    cdef int decode_own(self, int n) except -1:
        """A decode of this sequence alone (prefill chunks, passes that precede the step)."""
        cdef int32_t rc
        cdef int64_t t0 = C.llama_time_us()
        with nogil:
            rc = self.ctx.decode_batch(n)
        self.account_decode(n, C.llama_time_us() - t0)
        self.ctx.raise_for_decode(rc, n)
        return 0

    cdef int prefill_range(self, int start, int end, int chunk) except -1:
        """Decode positions [start, end) of this sequence into its KV cache, no logits, in
        decodes of at most ``chunk`` tokens (a prefill; the context's attention as it is set)."""
        cdef int i, n, pos = start
        while pos < end:
            n = min(end - pos, chunk)
            for i in range(n):
                self.put(i, pos + i, self.x[pos + i], False)
            self.decode_own(n)
            pos += n
        return 0

    # -- hooks ------------------------------------------------------------------------------

    cdef int bind(self, Context ctx, int slot, int companion) except -1:
        """Check the context can hold this sequence and prefill what is cached up front."""
        self.ctx = ctx
        self.slot = slot
        self.companion = companion
        return 0

    cdef int prepare(self) except -1:
        return 0

    cdef int fill_draft(self, int n) except -1 nogil:
        self.n_draft_rows = 0
        return n

    cdef int read_draft(self) except -1:
        return 0

    cdef int drop_draft(self) except -1 nogil:
        return 0

    cdef int fill(self, int n) except -1 nogil:
        with gil:
            raise NotImplementedError("Sequence.fill")

    cdef int after_decode(self) except -1 nogil:
        return 0

    cdef int sample(self, const float * logits, int device, RowSampler sampler) except -1 nogil:
        """Sample this step's rows itself (sequences whose rows are not plain). ``logits`` are
        the decode's rows, in host memory (``device`` -1) or on CUDA device ``device``."""
        with gil:
            raise NotImplementedError("Sequence.sample: only for sequences whose rows are not plain")

    cdef int score(self) except -1 nogil:
        """The sampled rows into the step view's arrays (and, for a policy that edits, the
        placed tokens of the region with what this step predicts there)."""
        cdef int i, r, k = 0
        cdef int32_t tok
        if self.skip_commit:
            return 0
        check_rows(self.rows.data(), self.n_rows if self.rows_full else self.n_masked)
        for i in range(self.n_masked):
            r = self.positions[i] if self.rows_full else i
            self.x0[i] = self.rows[r].token
            self.prob[i] = self.rows[r].prob
            self.entropy[i] = self.rows[r].entropy
            self.margin[i] = self.rows[r].margin
        if self.edits:
            # rows_full: row r is position r of the region
            for r in range(self.region_length):
                tok = self.x[self.region_start + r]
                if tok == self.mask_id or self.region_start + r < self.n_prompt:
                    continue
                self.placed[k] = r
                self.placed_tokens[k] = tok
                self.placed_x0[k] = self.rows[r].token
                self.placed_prob[k] = self.rows[r].prob
                self.placed_entropy[k] = self.rows[r].entropy
                self.placed_margin[k] = self.rows[r].margin
                k += 1
        self.n_placed = k
        return 0

    cdef int commit(self) except -1 nogil:
        """The policy picks, the chosen positions are written (then, for a policy that edits,
        the placed tokens it overwrites); returns how many masks were filled."""
        cdef int i, j, p, count = 0, least
        cdef StepView view
        if self.skip_commit:
            return 0
        self.step_positions.clear()
        self.step_tokens.clear()
        self.n_edits = 0
        view.n_masked = self.n_masked
        view.positions = self.positions.data()
        view.x0 = self.x0.data()
        view.prob = self.prob.data()
        view.entropy = self.entropy.data()
        view.margin = self.margin.data()
        view.counters = self.counters.data()
        view.seed = self.sp.seed
        view.n_transfer = self.n_transfer
        view.step = self.step
        view.steps = self.region_steps
        view.block_index = self.region
        view.block_length = self.region_length
        view.region_start = self.region_start
        view.work = self.work.data()
        view.n_placed = self.n_placed if self.edits else 0
        view.placed = self.placed.data()
        view.placed_tokens = self.placed_tokens.data()
        view.placed_x0 = self.placed_x0.data()
        view.placed_prob = self.placed_prob.data()
        view.placed_entropy = self.placed_entropy.data()
        view.placed_margin = self.placed_margin.data()
        if self.n_masked == 0:
            count = 0           # a step after the region's last mask (token editing)
        elif self.force_all:
            # the schedule's last step finishes the region, whatever the policy says
            count = self.n_masked
            for i in range(count):
                self.chosen[i] = i
        else:
            count = self.policy.select(&view, self.chosen.data())
            least = 1 if (self.min_commit > 0 or self.policy.adaptive) else 0
            if count > self.n_masked:
                count = self.n_masked
            if count < least:
                count = least
                self.chosen[0] = 0
            for i in range(count):
                if self.chosen[i] < 0 or self.chosen[i] >= self.n_masked:
                    _bad_choice(self.policy, self.chosen[i], self.n_masked)
        for i in range(count):
            j = self.chosen[i]
            if self.x[self.region_start + self.positions[j]] != self.mask_id:
                continue        # chosen twice: committed once
            self.x[self.region_start + self.positions[j]] = self.x0[j]
            self.step_positions.push_back(self.region_start + self.positions[j])
            self.step_tokens.push_back(self.x0[j])
        self.n_filled = <int> self.step_positions.size()
        if view.n_placed > 0:
            # edits read the step's placed tokens (the view), never the masks filled just now
            count = self.policy.edit(&view, self.edit_chosen.data())
            if count > view.n_placed:
                count = view.n_placed
            for i in range(count):
                j = self.edit_chosen[i]
                if j < 0 or j >= view.n_placed:
                    _bad_edit(self.policy, j, view.n_placed)
                p = self.region_start + self.placed[j]
                if self.x[p] == self.placed_x0[j]:
                    continue    # the same token (or chosen twice)
                self.x[p] = self.placed_x0[j]
                self.step_positions.push_back(p)
                self.step_tokens.push_back(self.placed_x0[j])
                self.n_edits += 1
            self.n_edits_total += self.n_edits
        self.committed_log.push_back(self.n_filled)
        return self.n_filled

    cdef int end_step(self) except -1:
        """The region bookkeeping after a step: the step's record (``step_region``,
        ``step_index``, ``step_left``), then the region is done when no mask is left in it or,
        for a policy that follows the schedule (not adaptive), when its ``region_steps`` are
        spent. Returns ``region_done``; a subclass extends it (``Sequence.end_step(self)``)."""
        cdef int left = self.n_masked - self.n_filled
        self.step_region, self.step_index, self.step_left = self.region, self.step, left
        self.step += 1
        self.region_done = left == 0 or (self.step >= self.region_steps and not self.policy.adaptive)
        if self.region_done and self.edits and self.policy.post_steps > 0:
            # token editing: after the last mask, the region steps on until a step changes
            # nothing or post_steps steps have run
            if self.n_masked == 0:
                self.n_post += 1
                self.region_done = self.n_edits == 0 or self.n_post >= self.policy.post_steps
            else:
                self.region_done = False
        if self.region_done:
            self.n_post = 0
        if self.region_done:
            self.steps_per_region.append(self.step)
            self.region += 1
            self.step = 0
        return self.region_done


cdef class Scheduler:
    """Advances the sequences of one context, one step at a time, one decode per step.

    ``add(seq)`` puts a sequence in a free slot (and prefills it), ``step()`` runs one
    denoising step of every unfinished sequence and returns ``(stepped, finished)``: the
    sequences that committed tokens, and those whose active region (block) finished at
    this step; ``remove(seq)`` frees its slot and KV cells.
    """

    def __init__(self, Context ctx not None, RowSampler sampler not None):
        ctx._check_open()
        self.ctx = ctx
        self.sampler = sampler
        self._sequences = []
        self._active = ()
        self._stale = True
        # sampler="device": the logits stay where the output layer computed them (not for RPC
        # models: their rows come back through the RPC client anyway)
        self.in_place = sampler.in_place and not ctx.model.uses_rpc
        self._reused_at_start = C.llama_perf_context(ctx.ptr).n_reused

    @property
    def graphs_reused(self):
        """Decodes of this scheduler that reused the previous decode's graph (llama.cpp's
        count): a step of the same shape as the one before. On a CUDA device those are the
        calls that replay a captured CUDA graph without checking it again."""
        if self.ctx.closed:
            return 0
        # 0 after a perf_reset() of the context
        return max(0, C.llama_perf_context(self.ctx.ptr).n_reused - self._reused_at_start)

    @property
    def sequences(self):
        return list(self._sequences)

    def _used(self):
        return ({(<Sequence> s).slot for s in self._sequences}
                | {(<Sequence> s).companion for s in self._sequences})

    def free_slot(self, exclude=()):
        """The lowest free sequence id, or -1."""
        used = self._used()
        for i in range(self.ctx.n_seq_max):
            if i not in used and i not in exclude:
                return i
        return -1

    def add(self, Sequence seq not None, slot=None):
        """Bind ``seq`` to a free slot (the lowest when ``slot`` is None) and prefill it."""
        cdef Sequence other
        cdef int s = self.free_slot() if slot is None else slot
        if seq.slot >= 0 or seq.started:
            raise ValueError("this sequence has already run in a scheduler (a sequence runs in one, "
                             "from start to end)")
        if seq.done:
            raise ValueError("this sequence has nothing left to generate")
        if seq.model is not self.ctx.model:
            raise ValueError("this sequence was made for another model than the scheduler's context")
        if s < 0:
            raise ValueError(f"every slot is busy (the context has n_seq_max={self.ctx.n_seq_max})")
        if seq.sp.plain_prob and not self.sampler.gives_plain_prob:
            raise ValueError(f"the {self.sampler.name!r} sampler does not give p(x0) under the plain softmax "
                             "(RowResult.plain_prob), which add_gumbel_noise with a temperature needs")
        if s >= self.ctx.n_seq_max or s in self._used():
            raise ValueError(f"slot {s} is not free")
        cdef int companion = -1
        if seq.n_seq_ids > 1:
            companion = self.free_slot(exclude=(s,))
            if companion < 0:
                raise ValueError("this sequence decodes a second pass (classifier-free guidance) and "
                                 f"needs two free sequence ids; the context has n_seq_max={self.ctx.n_seq_max}")
        if self._sequences:
            if not self.ctx.has_memory:
                raise ValueError("a context without KV memory decodes one sequence at a time")
            if not self.ctx.kv_unified:
                # llama.cpp would split a step into ubatches of equal shares per sequence, and a
                # non-causal token would not see the rest of its own sequence's step
                raise ValueError("several sequences in one step need a context made with kv_unified=True "
                                 "(one KV buffer for all): with a buffer per sequence llama.cpp splits a "
                                 "step, and a position would not attend to all of its block")
            if not self.sampler.uses_host_logits:
                raise ValueError(f"the {self.sampler.name!r} sampler serves one sequence at a time")
            other = self._sequences[0]
            if other.block_causal != seq.block_causal:
                raise ValueError("sequences share a step only with the same attention: block "
                                 f"length {seq.block_causal} cannot join block length {other.block_causal} "
                                 "(0: full diffusion)")
        cdef long n_decode = seq.n_decode, n_tokens = seq.n_decode_tokens
        cdef double decode_us = seq.decode_us
        cdef int64_t t0 = C.llama_time_us()
        seq.started = True
        try:
            seq.bind(self.ctx, s, companion)       # sizes the sequence's step on this context
            tokens = seq.max_step_tokens + sum((<Sequence> o).max_step_tokens for o in self._sequences)
            if tokens > self.ctx.n_ubatch or tokens > self.ctx.batch_capacity:
                raise ValueError(f"a step of these sequences decodes up to {tokens} tokens at once: the "
                                 f"context needs n_ubatch >= {tokens} (it has {self.ctx.n_ubatch})")
            rows = seq.max_out_rows + sum((<Sequence> o).max_out_rows for o in self._sequences)
            self.sampler.reserve(rows, seq.n_vocab, &seq.sp)
        except BaseException:
            self._free(seq)
            raise
        finally:
            self.prefill_us += C.llama_time_us() - t0
            self.n_decode += seq.n_decode - n_decode
            self.n_decode_tokens += seq.n_decode_tokens - n_tokens
            self.decode_us += seq.decode_us - decode_us
        rows = seq.max_out_rows + sum((<Sequence> o).max_out_rows for o in self._sequences)
        if self.rows.size() < <size_t> rows:
            self.rows.resize(rows)
            self.counters.resize(rows)
        self._sequences.append(seq)
        self._sequences.sort(key=lambda o: (<Sequence> o).slot)    # the batch goes in slot order
        self._stale = True

    cdef _free(self, Sequence seq):
        if self.ctx.has_memory and not self.ctx.closed:
            for i in (seq.slot, seq.companion):
                if i >= 0:
                    C.llama_memory_seq_rm(self.ctx.mem, i, -1, -1)
        seq.slot = -1
        seq.companion = -1

    def remove(self, Sequence seq not None):
        """Take ``seq`` out and free its KV cells (no-op when it is not here)."""
        if seq in self._sequences:
            self._sequences.remove(seq)
            self._stale = True
            if not self.ctx.closed:
                self._free(seq)

    def clear(self):
        for seq in list(self._sequences):
            self.remove(seq)

    cdef _refresh_active(self):
        """The unfinished sequences, in slot order: a tuple for callers and an array of the
        same objects for the step's loops (made again only when the set changes)."""
        cdef Sequence seq
        self._active = tuple(s for s in self._sequences if not (<Sequence> s).done)
        self._active_ptrs.clear()
        for seq in self._active:
            self._active_ptrs.push_back(<PyObject *> seq)
        self._stale = False

    def step(self):
        """One denoising step of every unfinished sequence, in one llama_decode.

        Returns ``(stepped, finished)``: the sequences that took part (a tuple, the same object
        while the set does not change) and those whose active region finished at this step.
        The loops below run over a C array of the sequences: per sequence, a step makes C
        calls only (no Python objects are made or looked up)."""
        cdef size_t m
        cdef bint in_place = self.in_place
        cdef bint caller_on_device = self.ctx.logits_on_device
        if self._stepping:
            raise RuntimeError("Scheduler.step() called from inside a step (a policy or callback of this "
                               "scheduler's own step)")
        if self._stale:
            self._refresh_active()
        m = self._active_ptrs.size()
        if m == 0:
            return (), []
        cdef PyObject ** active = self._active_ptrs.data()
        self._stepping = True
        try:
            return self._step(active, m, in_place)
        finally:
            self._stepping = False
            # leave the caller's context as it was (its own decodes copy the logits, unless it
            # set keep_logits_on_device itself)
            self.ctx.set_logits_on_device(caller_on_device)

    cdef int _decode_shared(self, PyObject ** active, size_t m, int n, bint on_device, bint drafting) except -1:
        """One llama_decode of the shared batch's ``n`` tokens (the logits left on the device when
        ``on_device``), timed and counted for the scheduler and for each sequence in it (``drafting``:
        those that put draft tokens in)."""
        cdef Sequence seq
        cdef size_t i
        cdef int32_t rc
        cdef int64_t t0 = C.llama_time_us(), t1
        with nogil:
            self.ctx.set_logits_on_device(on_device)
            rc = self.ctx.decode_batch(n)
        t1 = C.llama_time_us()
        self.n_decode += 1
        self.n_decode_tokens += n
        self.decode_us += t1 - t0
        for i in range(m):
            seq = <Sequence> active[i]
            if not drafting or (seq.drafts and seq.n_step_tokens):
                seq.account_decode(seq.n_step_tokens, t1 - t0)
        self.ctx.raise_for_decode(rc, n)
        return 0

    cdef int _draft_pass(self, PyObject ** active, size_t m) except -1:
        """One decode of every drafting sequence's draft (speculation), under the block-causal
        attention they share, logits on the host; each reads its rows, and what the pass wrote
        to the KV cache is dropped again (also when it fails)."""
        cdef Sequence seq
        cdef size_t i
        cdef int n = 0, rows = 0, attention = 0, k
        cdef int32_t rc
        cdef int64_t t0, t1
        for i in range(m):
            seq = <Sequence> active[i]
            if not seq.drafts:
                continue
            seq.draft_row_start = rows
            k = n
            with nogil:
                n = seq.fill_draft(n)
            seq.n_step_tokens = n - k
            rows += seq.n_draft_rows
            if n > k:
                if attention and seq.draft_attention != attention:
                    raise ValueError("sequences that draft in one pass need one block length")
                attention = seq.draft_attention
        if n == 0:
            return 0
        if n > self.ctx.n_ubatch:
            raise ValueError(f"this step's drafts decode {n} tokens: the context needs n_ubatch >= {n} "
                             f"(it has {self.ctx.n_ubatch})")
        cdef int before = self.ctx.block_causal
        try:
            self.ctx.set_block_causal(attention)
            self._decode_shared(active, m, n, False, True)     # the rows on the host: read_draft reads them
            for i in range(m):
                seq = <Sequence> active[i]
                if seq.drafts and seq.n_step_tokens:
                    seq.read_draft()
        finally:
            for i in range(m):
                seq = <Sequence> active[i]
                if seq.drafts:
                    seq.drop_draft()
            self.ctx.set_block_causal(before)
        return 0

    cdef tuple _step(self, PyObject ** active, size_t m, bint in_place):
        cdef Sequence seq, first, other
        cdef int n = 0, rows = 0, total, k
        cdef size_t i, j
        cdef int32_t rc
        cdef int64_t t0, t1
        cdef long kv = 0, n_decode, tokens
        cdef double decode_us
        cdef int64_t V
        cdef const float * logits
        cdef int device = -1
        cdef bint any_finished = False
        for i in range(m):
            seq = <Sequence> active[i]
            n_decode, tokens, decode_us = seq.n_decode, seq.n_decode_tokens, seq.decode_us
            seq.prepare()       # may decode on its own (the recompute mode's prefix)
            self.n_decode += seq.n_decode - n_decode
            self.n_decode_tokens += seq.n_decode_tokens - tokens
            self.decode_us += seq.decode_us - decode_us
        self._draft_pass(active, m)
        for i in range(m):
            seq = <Sequence> active[i]
            seq.row_start = rows
            k = n
            with nogil:
                n = seq.fill(n)
            seq.n_step_tokens = n - k
            rows += seq.n_rows
            kv += seq.kv_tokens
            if seq.host_logits:
                in_place = False
        if n > self.ctx.n_ubatch:
            raise ValueError(f"this step decodes {n} tokens: the context needs n_ubatch >= {n} "
                             f"(it has {self.ctx.n_ubatch})")
        if kv > self.kv_tokens_peak:
            self.kv_tokens_peak = kv
        self.n_steps += 1
        self._decode_shared(active, m, n, in_place, False)

        # sample: runs of plain sequences with equal settings in one call, the rest alone
        t0 = C.llama_time_us()
        # host memory (device -1), or the output layer's CUDA memory for a sampler that reads it
        logits = self.ctx.step_logits(self.sampler.reads_device, &device)
        if self.ctx.logits_stayed:
            self.n_in_place += 1
        else:
            self.logits_copied_bytes += <long long> self.ctx.n_outputs * self.ctx.n_vocab * sizeof(float)
        for i in range(m):
            seq = <Sequence> active[i]
            with nogil:
                seq.after_decode()
        i = 0
        while i < m:
            first = <Sequence> active[i]
            if not first.plain:
                with nogil:
                    first.sample(logits, device, self.sampler)
                i += 1
                continue
            total = first.n_rows
            j = i + 1
            while j < m:
                other = <Sequence> active[j]
                if not (other.plain and _same_sampling(&other.sp, &first.sp)):
                    break
                total += other.n_rows
                j += 1
            for k in range(<int> i, <int> j):
                other = <Sequence> active[k]
                memcpy(self.counters.data() + other.row_start,
                       other.row_counters.data() if other.rows_full else other.counters.data(),
                       other.n_rows * sizeof(uint64_t))
            V = first.n_vocab
            with nogil:
                if device >= 0:
                    self.sampler.sample_device(logits + first.row_start * V, device, V, total, &first.sp,
                                               self.counters.data() + first.row_start,
                                               self.rows.data() + first.row_start)
                else:
                    self.sampler.sample(logits + first.row_start * V if logits != NULL else NULL, V, total,
                                        &first.sp, self.counters.data() + first.row_start,
                                        self.rows.data() + first.row_start)
            for k in range(<int> i, <int> j):
                other = <Sequence> active[k]
                memcpy(other.rows.data(), self.rows.data() + other.row_start, other.n_rows * sizeof(RowResult))
            i = j
        for i in range(m):
            seq = <Sequence> active[i]
            with nogil:
                seq.score()
        t1 = C.llama_time_us()
        self.sample_us += t1 - t0
        for i in range(m):
            seq = <Sequence> active[i]
            seq.sample_us += (t1 - t0) * seq.n_rows / max(rows, 1)     # its share of the rows
        # the policies pick, the steps commit (as each sequence alone would)
        t0 = C.llama_time_us()
        for i in range(m):
            seq = <Sequence> active[i]
            t1 = C.llama_time_us()
            with nogil:
                seq.commit()
            seq.select_us += C.llama_time_us() - t1
        self.select_us += C.llama_time_us() - t0
        for i in range(m):
            seq = <Sequence> active[i]
            if seq.end_step():
                any_finished = True
                if seq.region >= seq.n_regions:
                    self._stale = True      # done: the next step leaves it out
        stepped = self._active
        finished = [s for s in stepped if (<Sequence> s).region_done] if any_finished else []
        PyErr_CheckSignals()        # Ctrl-C between steps raises KeyboardInterrupt here
        return stepped, finished

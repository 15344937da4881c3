# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""Block diffusion of many sequences in one context (continuous batching).

Each sequence lives in a *slot* (llama.cpp sequence id = slot index) of a context whose KV
cache is shared by all slots. One ``tick()`` is one denoising step of every active
sequence, in one llama_decode call: for each slot, its pending store pass (the previous
block, no logits; the block-causal mask of patch 0003 keeps it exact) and its active block.
A sequence's steps, RNG counters and policy calls are exactly those of a solo
``BlockDiffusion`` run, so greedy tokens match generating it alone.

Python drives it: ``admit(slot, prompt, ...)`` prefills a prompt into a free slot,
``tick()`` runs one step and returns the slots whose block finished, ``release(slot)``
frees a finished sequence's KV cells so the slot can take the next queued prompt.
"""

from libc.stdint cimport int32_t, int64_t, uint64_t
from libcpp.vector cimport vector
from cpython.exc cimport PyErr_CheckSignals

cimport llamadiff.llama as C
from llamadiff._core cimport Context, Model
from llamadiff._sampling cimport SamplingParams, RowResult, RowSampler, check_rows
from llamadiff._remask cimport RemaskPolicy, StepView


cdef inline int transfer_count(int block_length, int steps, int step) noexcept nogil:
    return block_length // steps + (1 if step < block_length % steps else 0)


cdef struct Slot:
    bint active
    int n_prompt, n_total, n_blocks, next_block, step
    bint store_pending
    int64_t offset          # start of this slot's tokens in the flat token buffer
    int row_start, n_masked # this tick: first logits row, masked positions of the active block
    int n_committed


cdef class BatchedBlockDiffusion:
    """Several block-diffusion sequences denoised together, one decode per step."""
    cdef Context ctx
    cdef Model model
    cdef RemaskPolicy policy
    cdef readonly RowSampler sampler
    cdef SamplingParams sp
    cdef readonly int n_slots, capacity, block_length, steps, mask_id
    cdef int n_vocab
    cdef vector[Slot] slots
    cdef vector[int32_t] x                       # n_slots * capacity tokens
    # scratch for one tick (every slot's active block)
    cdef vector[int32_t] positions, x0, chosen
    cdef vector[float] prob, entropy
    cdef vector[RowResult] rows
    cdef vector[uint64_t] counters
    # telemetry
    cdef readonly long n_decode, n_decode_tokens, n_ticks
    cdef readonly double decode_us, sample_us, select_us, prefill_us
    cdef readonly long kv_tokens_peak

    def __init__(self, Context ctx not None, int n_slots, int capacity, int block_length, int steps,
                 RemaskPolicy policy not None, *, float temperature=0.0, int top_k=0,
                 float top_p=1.0, unsigned long long seed=0, RowSampler sampler=None, int n_threads=1):
        self.ctx = ctx
        self.model = ctx.model
        self.policy = policy
        mask = self.model.mask_token_id
        if mask is None:
            raise ValueError("the model has no mask token")
        if n_slots < 1 or n_slots > ctx.n_seq_max:
            raise ValueError(f"n_slots must be in 1..{ctx.n_seq_max} (the context's n_seq_max)")
        if not ctx.has_memory:
            raise ValueError("batched block diffusion needs a context with a KV cache")
        if 2 * block_length * n_slots > ctx.n_ubatch:
            raise ValueError(f"n_ubatch ({ctx.n_ubatch}) must hold a store pass and a block for "
                             f"every slot: at least {2 * block_length * n_slots}")
        if capacity % block_length:
            raise ValueError("capacity must be a multiple of block_length")
        self.mask_id = mask
        self.n_vocab = self.model.n_vocab
        self.n_slots = n_slots
        self.capacity = capacity
        self.block_length = block_length
        self.steps = steps
        self.slots.resize(n_slots)
        self.x.resize(<size_t> n_slots * capacity, self.mask_id)
        for i in range(n_slots):
            self.slots[i].active = False
            self.slots[i].offset = <int64_t> i * capacity
        cdef int rows = n_slots * block_length
        self.positions.resize(rows)
        self.x0.resize(rows)
        self.chosen.resize(block_length)
        self.prob.resize(rows)
        self.entropy.resize(rows)
        self.rows.resize(rows)
        self.counters.resize(rows)
        self.sp.temperature = temperature
        self.sp.top_k = top_k
        self.sp.top_p = top_p
        self.sp.seed = seed
        self.sp.skip_token = self.mask_id
        self.sampler = sampler if sampler is not None else RowSampler(n_threads)
        if not self.sampler.uses_host_logits:
            raise ValueError("batched generation samples host logits: use the 'cpu' or 'cuda' sampler")
        self.sampler.reserve(rows, self.n_vocab, &self.sp)
        ctx.set_block_causal(block_length)

    # -- slots ------------------------------------------------------------------------------

    @property
    def active_slots(self):
        return [i for i in range(self.n_slots) if self.slots[i].active]

    def is_done(self, int slot):
        return self.slots[slot].next_block >= self.slots[slot].n_blocks

    def next_block(self, int slot):
        return self.slots[slot].next_block

    def tokens_between(self, int slot, int start, int end):
        cdef Slot * s = &self.slots[slot]
        start = max(0, start)
        end = min(end, s.n_total)
        return [self.x[s.offset + i] for i in range(start, end)]

    def committed(self, int slot):
        return self.slots[slot].n_committed

    cdef inline void _put(self, int b, int slot, int pos, bint want_logits) noexcept nogil:
        self.ctx.batch.token[b] = self.x[self.slots[slot].offset + pos]
        self.ctx.batch.pos[b] = pos
        self.ctx.batch.n_seq_id[b] = 1
        self.ctx.batch.seq_id[b][0] = slot
        self.ctx.batch.logits[b] = want_logits

    cdef int _decode(self, int n) except -1:
        cdef int32_t rc
        cdef int64_t t0 = C.llama_time_us()
        with nogil:
            rc = self.ctx.decode_batch(n)
        self.decode_us += C.llama_time_us() - t0
        self.n_decode += 1
        self.n_decode_tokens += n
        self.ctx.raise_for_decode(rc, n)
        return 0

    def admit(self, int slot, prompt, int n_generate):
        """Put a prompt in a free slot and prefill its full prompt blocks (block-causally)."""
        if slot < 0 or slot >= self.n_slots or self.slots[slot].active:
            raise ValueError(f"slot {slot} is not free")
        cdef int B = self.block_length
        cdef int i, pos, n
        cdef int n_prompt = len(prompt)
        cdef int n_blocks = (n_prompt + n_generate + B - 1) // B
        if n_blocks * B > self.capacity:
            raise ValueError(f"prompt ({n_prompt}) + generation rounded up to whole blocks "
                             f"({n_blocks * B} positions) exceeds the slot's n_ctx ({self.capacity})")
        for i in range(n_prompt):
            self.model._check_token(prompt[i])
        cdef Slot * s = &self.slots[slot]
        for i in range(self.capacity):
            self.x[s.offset + i] = prompt[i] if i < n_prompt else self.mask_id
        s.n_prompt = n_prompt
        s.n_blocks = n_blocks
        s.n_total = n_blocks * B
        s.next_block = n_prompt // B
        s.step = 0
        s.store_pending = False
        s.n_committed = 0
        cdef int64_t t0 = C.llama_time_us()
        C.llama_memory_seq_rm(self.ctx.mem, slot, -1, -1)
        cdef int n_full = s.next_block * B
        cdef int chunk = (self.ctx.n_ubatch // B) * B
        pos = 0
        while pos < n_full:
            n = min(n_full - pos, chunk)
            for i in range(n):
                self._put(i, slot, pos + i, False)
            self._decode(n)
            pos += n
        s.active = True
        self.prefill_us += C.llama_time_us() - t0

    def release(self, int slot):
        """Free a slot and its KV cells."""
        if self.slots[slot].active:
            C.llama_memory_seq_rm(self.ctx.mem, slot, -1, -1)
            self.slots[slot].active = False

    # -- one step of every active sequence ----------------------------------------------------

    def tick(self, callback=None):
        """One denoising step for every active, unfinished slot, in one decode.

        Returns the slots whose active block finished at this step."""
        cdef int B = self.block_length
        cdef int slot, i, n = 0, rows = 0, start, count, step
        cdef Slot * s
        cdef float * logits
        cdef int64_t t0, t1
        cdef StepView view
        cdef long kv = 0
        finished = []
        # 1. the batch: per slot, its pending store pass then its active block
        for slot in range(self.n_slots):
            s = &self.slots[slot]
            if not s.active or s.next_block >= s.n_blocks:
                s.n_masked = 0
                continue
            start = s.next_block * B
            if s.store_pending:
                for i in range(B):
                    self._put(n, slot, start - B + i, False)
                    n += 1
            s.row_start = rows
            s.n_masked = 0
            for i in range(B):
                if self.x[s.offset + start + i] == self.mask_id:
                    self.positions[rows + s.n_masked] = i
                    s.n_masked += 1
                self._put(n, slot, start + i, self.x[s.offset + start + i] == self.mask_id)
                n += 1
            rows += s.n_masked
            kv += start + B
        if n == 0:
            return finished
        self.kv_tokens_peak = max(self.kv_tokens_peak, kv)
        self._decode(n)
        self.n_ticks += 1

        # 2. drop every active block's KV, sample all rows at once
        t0 = C.llama_time_us()
        with nogil:
            for slot in range(self.n_slots):
                s = &self.slots[slot]
                if s.n_masked > 0 or (s.active and s.next_block < s.n_blocks):
                    s.store_pending = False
                    C.llama_memory_seq_rm(self.ctx.mem, slot, s.next_block * B, -1)
                    for i in range(s.n_masked):
                        self.counters[s.row_start + i] = ((<uint64_t> (s.next_block * B + self.positions[s.row_start + i]) << 16)
                                                          | <uint64_t> s.step)
            logits = C.llama_get_logits(self.ctx.ptr)
        self.sampler.sample(logits, self.n_vocab, rows, &self.sp, self.counters.data(), self.rows.data())
        check_rows(self.rows.data(), rows)
        t1 = C.llama_time_us()
        with nogil:
            for i in range(rows):
                self.x0[i] = self.rows[i].token
                self.prob[i] = self.rows[i].prob
                self.entropy[i] = self.rows[i].entropy
        # 3. per slot: the policy picks, the step commits (as a solo run would)
        for slot in range(self.n_slots):
            s = &self.slots[slot]
            if s.n_masked == 0:
                continue
            step = s.step
            start = s.next_block * B
            with nogil:
                view.n_masked = s.n_masked
                view.positions = self.positions.data() + s.row_start
                view.x0 = self.x0.data() + s.row_start
                view.prob = self.prob.data() + s.row_start
                view.entropy = self.entropy.data() + s.row_start
                view.n_transfer = min(max(transfer_count(B, self.steps, step), 1), s.n_masked)
                view.step = step
                view.steps = self.steps
                view.block_index = s.next_block
                view.block_length = B
                if step == self.steps - 1:
                    count = s.n_masked
                    for i in range(count):
                        self.chosen[i] = i
                else:
                    count = self.policy.select(&view, self.chosen.data())
                    count = min(max(count, 1), s.n_masked)
                for i in range(count):
                    self.x[s.offset + start + view.positions[self.chosen[i]]] = view.x0[self.chosen[i]]
                s.n_committed += count
            if callback is not None:
                callback(slot, s.next_block, step,
                         [start + view.positions[self.chosen[i]] for i in range(count)],
                         [view.x0[self.chosen[i]] for i in range(count)], s.n_masked - count)
            s.step += 1
            if s.n_masked - count == 0 or s.step >= self.steps:
                # the block is done: its store pass rides on the next block's first step
                s.next_block += 1
                s.step = 0
                s.store_pending = True
                finished.append(slot)
        self.sample_us += t1 - t0
        self.select_us += C.llama_time_us() - t1
        PyErr_CheckSignals()
        return finished

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""The block-diffusion denoising loop (SDAR family) with an exact KV cache.

Semantics (SDAR's ``generate.py``): the sequence of prompt + generation is cut into
blocks of ``B`` absolute positions; full prompt blocks are prefilled once; each later
block starts fully masked (except prompt tokens in it) and is denoised in at most
``steps`` steps, each step decoding only the active block (it attends to the cached
prefix and to itself), sampling x0 / p(x0) / entropy for every masked position and
committing the positions the remasking policy picks. A finished block's KV is stored
once -- fused into the first step of the next block (one decode instead of two), which
the block-causal mask of vendor/patches/0003 makes exact.

``cache=False`` is the reference behaviour: every step re-decodes prefix + active block
from an empty memory. Both give the same tokens.

Per step the loop holds the GIL only to call the user's callback and to check for
signals (Ctrl-C); filling the batch, llama_decode, sampling and the policy run without it.
"""

from libc.stdint cimport int32_t, int64_t, uint64_t
from libcpp.vector cimport vector
from cpython.exc cimport PyErr_CheckSignals

cimport llamadiff.llama as C
from llamadiff._core cimport Context, Model
from llamadiff._sampling cimport SamplingParams, RowResult, RowSampler, check_rows
from llamadiff._remask cimport RemaskPolicy, StepView


cdef inline int transfer_count(int block_length, int steps, int step) noexcept nogil:
    """Tokens to commit at ``step``: B // steps, plus one for the first B % steps steps."""
    return block_length // steps + (1 if step < block_length % steps else 0)


class StepInfo:
    """What the callback sees after each denoising step."""
    __slots__ = ("block_index", "step", "positions", "tokens", "n_masked_left", "index")

    def __init__(self, block_index, step, positions, tokens, n_masked_left, index=None):
        self.block_index = block_index
        self.step = step
        self.positions = positions          # absolute positions committed at this step
        self.tokens = tokens                # the tokens committed there
        self.n_masked_left = n_masked_left  # masks left in the active block
        self.index = index                  # the prompt's index in a batch (None: one prompt)

    def __repr__(self):
        return (f"StepInfo(block={self.block_index}, step={self.step}, committed={len(self.positions)}, "
                f"left={self.n_masked_left})")


cdef class BlockDiffusion:
    """State of one block-diffusion generation on a Context.

    Drive it with ``prefill()`` then ``run_block()`` until ``done``; ``tokens`` holds the
    whole sequence (prompt + generated, masks where not yet decoded).
    """
    cdef Context ctx
    cdef Model model
    cdef RemaskPolicy policy
    cdef readonly RowSampler sampler
    cdef SamplingParams sp
    cdef vector[int32_t] x
    cdef readonly int n_prompt, block_length, steps, n_total, n_blocks, next_block, mask_id
    cdef int n_vocab, n_threads, chunk
    cdef readonly bint use_cache
    cdef bint store_pending
    # scratch, sized once per run: no allocation inside the loop
    cdef vector[int32_t] positions, x0, chosen
    cdef vector[float] prob, entropy
    cdef vector[RowResult] rows
    cdef vector[uint64_t] counters
    cdef vector[int32_t] committed_log
    # telemetry
    cdef readonly long n_decode, n_decode_tokens
    cdef readonly double decode_us, sample_us, select_us, prefill_us, prefill_decode_us
    cdef readonly list steps_per_block

    def __init__(self, Context ctx not None, prompt, int n_generate, int block_length, int steps,
                 RemaskPolicy policy not None, *, float temperature=0.0, int top_k=0,
                 float top_p=1.0, unsigned long long seed=0, bint cache=True, int n_threads=1,
                 RowSampler sampler=None):
        cdef int i
        self.ctx = ctx
        self.model = ctx.model
        self.policy = policy
        mask = self.model.mask_token_id
        if mask is None:
            raise ValueError("the model has no mask token")
        self.mask_id = mask
        self.n_vocab = self.model.n_vocab
        self.block_length = block_length
        self.steps = steps
        self.use_cache = cache
        self.n_threads = n_threads
        self.n_prompt = len(prompt)
        self.n_blocks = (self.n_prompt + n_generate + block_length - 1) // block_length
        self.n_total = self.n_blocks * block_length
        self.next_block = self.n_prompt // block_length
        # decode chunks stay aligned to blocks and within n_ubatch (non-causal limit)
        self.chunk = (ctx.n_ubatch // block_length) * block_length
        if self.chunk < 2 * block_length:
            raise ValueError(f"n_ubatch ({ctx.n_ubatch}) must be at least 2 * block_length")
        if self.n_total > ctx.n_ctx:
            raise ValueError(f"prompt ({self.n_prompt}) + generation rounded up to whole blocks "
                             f"({self.n_total} positions) exceeds n_ctx={ctx.n_ctx}")
        self.x.resize(self.n_total, self.mask_id)
        for i in range(self.n_prompt):
            self.model._check_token(prompt[i])
            self.x[i] = prompt[i]
        self.sp.temperature = temperature
        self.sp.top_k = top_k
        self.sp.top_p = top_p
        self.sp.seed = seed
        self.sp.skip_token = self.mask_id
        self.positions.resize(block_length)
        self.x0.resize(block_length)
        self.chosen.resize(block_length)
        self.prob.resize(block_length)
        self.entropy.resize(block_length)
        self.rows.resize(block_length)
        self.counters.resize(block_length)
        # the row sampler: CPU by default; llamadiff.cuda / llamadiff._backend provide others
        self.sampler = sampler if sampler is not None else RowSampler(n_threads)
        self.sampler.reserve(block_length, self.n_vocab, &self.sp)
        self.steps_per_block = []
        self.store_pending = False

    # -- read-only views ----------------------------------------------------------------

    @property
    def done(self):
        return self.next_block >= self.n_blocks

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

    # -- batch helpers (no GIL) ----------------------------------------------------------------

    cdef inline void _put(self, int slot, int32_t pos, bint want_logits) noexcept nogil:
        self.ctx.batch.token[slot] = self.x[pos]
        self.ctx.batch.pos[slot] = pos
        self.ctx.batch.n_seq_id[slot] = 1
        self.ctx.batch.seq_id[slot][0] = 0
        self.ctx.batch.logits[slot] = want_logits

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

    cdef int _decode_committed(self, int start, int end, int reserve) except -1:
        """Decode x[start:end] (no logits) in block-aligned chunks, leaving the last chunk in
        the batch (its size is returned) so the caller can append ``reserve`` more tokens."""
        cdef int n, pos = start
        while end - pos + reserve > self.chunk:
            n = min(end - pos, self.chunk)
            for i in range(n):
                self._put(i, pos + i, False)
            self._decode(n)
            pos += n
        for i in range(end - pos):
            self._put(i, pos + i, False)
        return end - pos

    # -- phases ---------------------------------------------------------------------------------

    def prefill(self):
        """Start on a clean memory and cache the full prompt blocks (block-causally)."""
        cdef int64_t t0 = C.llama_time_us()
        cdef int n_full = self.next_block * self.block_length
        self.ctx.memory_clear()
        self.ctx.set_block_causal(self.block_length)
        if self.use_cache and n_full > 0:
            n = self._decode_committed(0, n_full, 0)
            if n > 0:
                self._decode(n)
        self.prefill_us = C.llama_time_us() - t0
        self.prefill_decode_us = self.decode_us

    def run_block(self, callback=None):
        """Denoise the next block to the end. Returns False when the callback asked to stop."""
        if self.done:
            raise RuntimeError("generation is complete")
        cdef int B = self.block_length
        cdef int s = self.next_block * B
        cdef int step, i, n, n_masked, count
        cdef int64_t t0, t1
        cdef float * logits
        cdef StepView view
        cdef bint keep_going = True
        for step in range(self.steps):
            # masked positions of the active block, and the batch that decodes it
            n_masked = 0
            for i in range(B):
                if self.x[s + i] == self.mask_id:
                    self.positions[n_masked] = i
                    n_masked += 1
            if n_masked == 0:
                break
            if self.use_cache:
                n = self._decode_committed(s - B if self.store_pending else s, s, B)
            else:
                self.ctx.memory_clear()
                n = self._decode_committed(0, s, B)
            for i in range(B):
                self._put(n + i, s + i, self.x[s + i] == self.mask_id)
            self._decode(n + B)
            self.store_pending = False

            t0 = C.llama_time_us()
            with nogil:
                if self.use_cache:
                    # drop the active block's KV: the next step recomputes it
                    C.llama_memory_seq_rm(self.ctx.mem, 0, s, -1)
                logits = C.llama_get_logits(self.ctx.ptr)
                for i in range(n_masked):
                    self.counters[i] = (<uint64_t> (s + self.positions[i]) << 16) | <uint64_t> step
                self.sampler.sample(logits, self.n_vocab, n_masked, &self.sp, self.counters.data(),
                                    self.rows.data())
                check_rows(self.rows.data(), n_masked)
                for i in range(n_masked):
                    self.x0[i] = self.rows[i].token
                    self.prob[i] = self.rows[i].prob
                    self.entropy[i] = self.rows[i].entropy
                t1 = C.llama_time_us()
                view.n_masked = n_masked
                view.positions = self.positions.data()
                view.x0 = self.x0.data()
                view.prob = self.prob.data()
                view.entropy = self.entropy.data()
                view.n_transfer = min(max(transfer_count(B, self.steps, step), 1), n_masked)
                view.step = step
                view.steps = self.steps
                view.block_index = self.next_block
                view.block_length = B
                if step == self.steps - 1:
                    # the last step finishes the block, whatever the policy says
                    count = n_masked
                    for i in range(n_masked):
                        self.chosen[i] = i
                else:
                    count = self.policy.select(&view, self.chosen.data())
                    count = min(max(count, 1), n_masked)
                for i in range(count):
                    self.x[s + self.positions[self.chosen[i]]] = self.x0[self.chosen[i]]
                self.committed_log.push_back(count)
            self.sample_us += t1 - t0
            self.select_us += C.llama_time_us() - t1

            if callback is not None:
                picked = [self.chosen[i] for i in range(count)]
                info = StepInfo(self.next_block, step,
                                [s + self.positions[j] for j in picked],
                                [self.x0[j] for j in picked], n_masked - count)
                if callback(info) is False:
                    keep_going = False
                    break
            PyErr_CheckSignals()    # Ctrl-C between steps raises KeyboardInterrupt here
        if keep_going:
            self.steps_per_block.append(step + 1 if n_masked else step)
            self.next_block += 1
            self.store_pending = self.use_cache
        return keep_going

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""Block diffusion (SDAR family) as a sequence of the engine: exact KV cache, fused store pass.

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

``shift_logits`` (Fast-dLLM v2, trained from an autoregressive model with its next-token
labels kept): the output row of position p - 1 predicts position p. A block's first
position is then predicted by the last position before it, which each step decodes again
together with the block (the row is the block's autoregressive next-token prediction).
"""

import os

from libc.stdint cimport int32_t, int64_t, uint64_t

cimport llamadiff.llama as C
from llamadiff._core cimport Context, Model
from llamadiff._core import _has_cuda_device
from llamadiff.engine cimport Sequence
from llamadiff.policy cimport RemaskPolicy


cdef inline int transfer_count(int block_length, int steps, int step) noexcept nogil:
    """Tokens to commit at ``step``: B // steps, plus one for the first B % steps steps."""
    return block_length // steps + (1 if step < block_length % steps else 0)


FIXED_SHAPE_NEEDS = ("fixed_step_shape=True needs cache=True and shift_logits=False (the KV cache "
                     "and unshifted rows)")
FIXED_SHAPE_BATCH_FAULT = (
    "fixed_step_shape=True needs one sequence per context on a GPU (n_parallel=1): the pinned "
    "ggml-cuda faults ('an illegal instruction was encountered', which aborts the process) when it "
    "replays the CUDA graph of a step of several sequences; leave fixed_step_shape unset (then "
    "batches decode with the minimal steps)")
EDITS_NEED_UNSHIFTED = ("token editing (a policy with edits, strategy='token_editing') needs unshifted "
                        "rows (shift_logits=False): it reads the row of every position of the block")
# LLAMADIFF_BATCH_GRAPH_REPLAY=1 lifts that refusal: for the device check's search for the
# fault (scripts/device_check.sh graphs) and for trying a workaround (docs/BENCHMARKS.md)
BATCH_REPLAY_ENV = "LLAMADIFF_BATCH_GRAPH_REPLAY"


cdef class BlockSequence(Sequence):
    """One block-diffusion generation: ``n_generate`` new tokens after ``prompt`` in blocks
    of ``block_length``, at most ``steps`` steps per block."""
    cdef readonly int block_length, steps
    cdef readonly bint use_cache, shift
    cdef readonly bint fixed_shape   # every step decodes the finished block again and all B rows
    cdef int fixed_request           # fixed_step_shape as asked: -1 (None: decided in bind), 0, 1
    cdef int first_region            # the first region this sequence generates (after the prompt's)
    cdef bint store_pending
    cdef int chunk
    cdef int fill_from              # first position this step decodes before the block

    def __init__(self, Model model not None, prompt, int n_generate, int block_length, int steps,
                 RemaskPolicy policy not None, *, float temperature=0.0, int top_k=0,
                 float top_p=1.0, unsigned long long seed=0, bint cache=True,
                 bint shift_logits=False, fixed_shape=False):
        if block_length < 1 or steps < 1 or n_generate < 1:
            raise ValueError("block_length, steps and n_generate must be >= 1")
        if fixed_shape is not None and not isinstance(fixed_shape, bool):
            raise TypeError("fixed_shape must be None, True or False")
        if fixed_shape and (not cache or shift_logits):
            raise ValueError(FIXED_SHAPE_NEEDS)
        if policy.edits and shift_logits:
            raise ValueError(EDITS_NEED_UNSHIFTED)
        cdef int n_prompt = len(prompt)
        if shift_logits and n_prompt < 1:
            raise ValueError("this model reads shifted rows (shift_logits: row p - 1 predicts p, "
                             "e.g. from the GGUF's diffusion.shift_logits), which needs a prompt of "
                             "at least one token: the first position has no row before it")
        cdef int n_blocks = (n_prompt + n_generate + block_length - 1) // block_length
        self._init_sequence(model, prompt, n_blocks * block_length, policy, temperature, top_k, top_p, seed)
        self.block_length = block_length
        self.steps = steps
        self.use_cache = cache
        self.shift = shift_logits
        self.min_commit = 1
        self.region = n_prompt // block_length
        self.first_region = self.region
        self.fixed_request = -1 if fixed_shape is None else int(fixed_shape)
        self.n_regions = n_blocks
        self.block_causal = block_length
        # a policy that edits reads a row for every position of the block (rows_full)
        self.edits = policy.edits
        self._size_scratch(block_length)

    @property
    def next_block(self):
        return self.region

    def region_bounds(self, int r):
        return (r * self.block_length, (r + 1) * self.block_length)

    cdef int bind(self, Context ctx, int slot, int companion) except -1:
        cdef int B = self.block_length
        cdef int n_full = self.region * B
        if not ctx.has_memory:
            raise ValueError("block diffusion needs a context with a KV cache")
        self.chunk = (ctx.n_ubatch // B) * B      # decodes stay block-aligned, within n_ubatch
        if self.chunk < 2 * B:
            raise ValueError(f"n_ubatch ({ctx.n_ubatch}) must be at least 2 * block_length")
        if self.n_total > ctx.n_ctx:
            raise ValueError(f"prompt ({self.n_prompt}) + generation rounded up to whole blocks "
                             f"({self.n_total} positions) exceeds n_ctx={ctx.n_ctx}")
        if (self.fixed_request == 1 and ctx.n_seq_max > 1 and self.model.on_gpu
                and os.environ.get(BATCH_REPLAY_ENV) != "1"):
            raise ValueError(FIXED_SHAPE_BATCH_FAULT)
        # default: on for one sequence per context with the layers on a CUDA GPU (graph replay);
        # off on a CPU, where the extra rows and tokens are compute, on other GPU back ends
        # (ggml-vulkan replays no graphs), and for several sequences, whose replayed step
        # faults in the pinned ggml-cuda (FIXED_SHAPE_BATCH_FAULT)
        self.fixed_shape = self.fixed_request == 1 or (
            self.fixed_request == -1 and self.use_cache and not self.shift and self.model.on_gpu
            and ctx.n_seq_max == 1 and _has_cuda_device())
        self.rows_full = self.fixed_shape or self.edits
        Sequence.bind(self, ctx, slot, companion)
        # a step: the store pass and the block, or (recompute) a chunk ending with the block
        self.max_step_tokens = 2 * B if self.use_cache else self.chunk
        # prefill: the full prompt blocks, block-causally, on a clean slot
        cdef int64_t t0 = C.llama_time_us()
        C.llama_memory_seq_rm(ctx.mem, slot, -1, -1)
        ctx.set_block_causal(B)
        if self.use_cache:
            self.prefill_range(0, n_full, self.chunk)
        self.prefill_us = C.llama_time_us() - t0
        self.prefill_decode_us = self.decode_us
        self.store_pending = False
        return 0

    cdef int prepare(self) except -1:
        cdef int B = self.block_length
        cdef int s = self.region * B
        cdef int i, n
        # with shifted rows the step also decodes position s - 1 (its row predicts s)
        cdef int own = s - 1 if (self.shift and s > 0) else s
        if self.use_cache:
            if self.fixed_shape and self.region > self.first_region:
                # every step of the block decodes the finished block too, not only the first (its
                # store pass): one batch shape for the whole generation, so a GPU back end
                # replays one CUDA graph. The finished block's KV is rewritten with the values it
                # has: block-causal attention keeps it from seeing the active block, and the
                # batch is the same. (After the prompt, the prompt's block is not decoded again:
                # its KV came from the prefill, a batch of another shape.)
                self.fill_from = s - B
                C.llama_memory_seq_rm(self.ctx.mem, self.slot, self.fill_from, -1)
                return 0
            # the previous block's store pass rides on this step (it decodes s - 1 anyway)
            self.fill_from = s - B if self.store_pending else own
            if self.fill_from == own < s:
                C.llama_memory_seq_rm(self.ctx.mem, self.slot, own, -1)
            return 0
        # recompute: the prefix from an empty memory, in chunks that leave room for the block
        C.llama_memory_seq_rm(self.ctx.mem, self.slot, -1, -1)
        self.fill_from = 0
        # (block-aligned chunks: a position attends to its whole block, so a block is never
        # split between two decodes; with shifted rows the block before s is left to fill())
        while s - self.fill_from + B > self.chunk:
            n = min((s - B if self.shift else s) - self.fill_from, self.chunk)
            for i in range(n):
                self.put(i, self.fill_from + i, self.x[self.fill_from + i], False)
            self.decode_own(n)
            self.fill_from += n
        return 0

    cdef int fill(self, int n) except -1 nogil:
        cdef int B = self.block_length
        cdef int s = self.region * B
        cdef int i, p
        cdef bint masked
        # the row of a position is wanted when it predicts a masked one: its own, or with
        # shifted rows the next (rows stay in position order either way)
        for p in range(self.fill_from, s):
            self.put(n, p, self.x[p], self.shift and p == s - 1 and self.x[s] == self.mask_id)
            n += 1
        self.n_masked = 0
        for i in range(B):
            # with shifted rows, position 0 has no row to predict it: it stays as given
            masked = self.x[s + i] == self.mask_id and not (self.shift and s + i == 0)
            if masked:
                self.positions[self.n_masked] = i
                self.counters[self.n_masked] = (<uint64_t> (s + i) << 16) | <uint64_t> self.step
                self.n_masked += 1
            if self.shift:
                self.put(n, s + i, self.x[s + i], i + 1 < B and self.x[s + i + 1] == self.mask_id)
            elif self.rows_full:
                # a row for every position (one output count for every step): row i is position i
                self.row_counters[i] = (<uint64_t> (s + i) << 16) | <uint64_t> self.step
                self.put(n, s + i, self.x[s + i], True)
            else:
                self.put(n, s + i, self.x[s + i], masked)
            n += 1
        self.n_rows = B if self.rows_full else self.n_masked
        self.kv_tokens = s + B
        self.plain = True
        self.region_start = s
        self.region_length = B
        self.region_steps = self.steps
        self.n_transfer = min(max(transfer_count(B, self.steps, self.step), 1), self.n_masked)
        self.force_all = self.step >= self.steps - 1 and not self.policy.adaptive
        return n

    cdef int after_decode(self) except -1 nogil:
        self.store_pending = False
        if self.use_cache:
            # drop the active block's KV: the next step recomputes it
            C.llama_memory_seq_rm(self.ctx.mem, self.slot, self.region * self.block_length, -1)
        return 0

    cdef int end_step(self) except -1:
        if Sequence.end_step(self):
            self.store_pending = self.use_cache      # the finished block's KV goes in with the next step
        return self.region_done

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""Causal decoding of a block-diffusion checkpoint as a sequence of the engine: plain
autoregressive decoding, and lossless self-speculation.

A block-diffusion model whose body is a causal decoder (SDAR, Fast-dLLM v2, LLaDA2.x,
Nemotron-Labs-Diffusion) decodes two ways with the same weights and the same KV cache: as block
diffusion (a block of masks denoised bidirectionally) and as an autoregressive model (causal
attention, the row of position p - 1 predicts p).

``speculative=False``: one token per step, the causal row's token (greedy or sampled).

``speculative=True`` (greedy only): each step

1. **drafts** the rest of the active block: one block-diffusion pass over the pending token
   and masks up to the block's end (block-causal attention, as the model was trained), every
   mask's argmax a draft token; the pass's KV is dropped again. The scheduler decodes the
   drafts of all its speculative sequences in one pass (``Sequence.fill_draft``);
2. **verifies** them in one causal pass of the pending token and the drafts (the engine's
   shared decode of the step): the row before each draft position is the model's greedy
   autoregressive prediction there;
3. keeps the longest prefix of drafts equal to those predictions, plus the first prediction
   that differs (or, when every draft agrees, the prediction after the last one): between 1
   and block_length + 1 tokens per verify pass.

Every kept token is the causal argmax given the kept tokens before it, and the KV the verify
pass wrote for them is causal, so the output is token for token the model's greedy
autoregressive output (the mask token excluded from the argmax, as a diffusion checkpoint never
emits it) -- tests/test_causal.py checks it against llama_decode run one token at a time, on the
CPU with F32 weights and KV. One caveat holds for every speculative decoder: the verify pass
computes its rows in a batch, and where batched and one-token kernels round differently
(GPU mat-mat against mat-vec kernels, quantized weights) a near-tie between two tokens can
fall the other way than in one-token decoding.

Invariant between steps: positions ``< frontier`` are committed, and the KV cache holds the
causal KV of every committed position but the last one (``frontier - 1``, "pending"): the next
pass decodes it, so its row predicts ``frontier``.
"""

from libc.math cimport isnan
from libc.stdint cimport int32_t, int64_t, uint64_t
from libcpp.vector cimport vector

cimport llamadiff.llama as C
from llamadiff._core cimport Context, Model
from llamadiff._sampling cimport check_rows
from llamadiff.engine cimport Sequence
from llamadiff.policy cimport RemaskPolicy


SPECULATION_GREEDY = ("speculative decoding is lossless against greedy decoding: it needs temperature=0 "
                      "and no top_k / top_p")


cdef int _argmax(const float * row, int64_t n, int32_t skip) noexcept nogil:
    """The first maximum of ``row`` with token ``skip`` left out; -1 when no entry is a number."""
    cdef int64_t j
    cdef int best = -1
    cdef float v, top = 0.0
    for j in range(n):
        v = row[j]
        if j == skip or isnan(v):
            continue
        if best < 0 or v > top:
            best = <int> j
            top = v
    return best


cdef class CausalSequence(Sequence):
    """``n_generate`` tokens after ``prompt`` decoded causally (``speculative``: drafts of the
    rest of each block verified in one causal pass). Blocks of ``block_length`` positions are
    the regions a stream yields and the draft's window."""
    cdef readonly int block_length
    cdef readonly bint speculative, shift
    cdef readonly int frontier        # first position not committed; frontier - 1 is pending
    cdef int n_draft                  # this step's drafts (positions frontier ...)
    cdef vector[int32_t] draft
    cdef readonly long n_verify, n_drafted, n_accepted   # verify passes, drafts made, drafts kept
    cdef readonly long n_kept                            # tokens the verify passes kept
    cdef readonly double draft_us
    cdef int64_t draft_t0
    cdef bint drafted_now             # this step's draft pass wrote KV cells (drop_draft removes them)

    def __init__(self, Model model not None, prompt, int n_generate, int block_length, *,
                 bint speculative=False, float temperature=0.0, int top_k=0, float top_p=1.0,
                 unsigned long long seed=0, bint shift_logits=False):
        if block_length < 1 or n_generate < 1:
            raise ValueError("block_length and n_generate must be >= 1")
        cdef int n_prompt = len(prompt)
        if n_prompt < 1:
            raise ValueError("causal decoding needs a prompt of at least one token: the first new "
                             "token is predicted by the row of the last prompt token")
        if speculative and (temperature != 0.0 or top_k != 0 or top_p != 1.0):
            raise ValueError(SPECULATION_GREEDY)
        if speculative and block_length < 2:
            raise ValueError("speculative decoding drafts the rest of a block: block_length must be >= 2")
        self._init_sequence(model, prompt, n_prompt + n_generate, RemaskPolicy(), temperature, top_k,
                            top_p, seed)
        self.block_length = block_length
        self.speculative = speculative
        self.shift = shift_logits
        self.min_commit = 1
        self.region = n_prompt // block_length
        self.n_regions = (n_prompt + n_generate + block_length - 1) // block_length
        self.block_causal = 1             # the shared pass is causal (block-causal with blocks of 1)
        self.drafts = speculative
        self.draft_attention = block_length
        self.frontier = n_prompt
        self.draft.resize(block_length)
        self._size_scratch(block_length + 1)

    @property
    def next_block(self):
        return self.region

    def region_bounds(self, int r):
        return (r * self.block_length, min((r + 1) * self.block_length, self.n_total))

    @property
    def acceptance_length(self):
        """Tokens kept per verify pass (drafts kept + the corrected one); None before any."""
        return <double> self.n_kept / self.n_verify if self.n_verify else None

    cdef inline int _region_end(self) noexcept nogil:
        cdef int end = (self.region + 1) * self.block_length
        return end if end < self.n_total else self.n_total

    cdef int bind(self, Context ctx, int slot, int companion) except -1:
        cdef int n_cached = self.n_prompt - 1          # the last prompt token stays pending
        if not ctx.has_memory:
            raise ValueError("causal decoding needs a context with a KV cache")
        if self.n_total > ctx.n_ctx:
            raise ValueError(f"prompt ({self.n_prompt}) + generation ({self.n_total - self.n_prompt} "
                             f"positions) exceeds n_ctx={ctx.n_ctx}")
        if self.speculative and ctx.causal:
            raise ValueError("speculative decoding drafts with block-causal attention, which a causal context "
                             "cannot give: make the context with causal=False (the Generator's are)")
        if self.speculative and ctx.n_ubatch < self.block_length + 1:
            raise ValueError(f"n_ubatch ({ctx.n_ubatch}) must be at least block_length + 1 for speculative "
                             "decoding (a verify pass decodes the pending token and a block of drafts)")
        Sequence.bind(self, ctx, slot, companion)
        self.max_step_tokens = self.block_length + 1 if self.speculative else 1
        cdef int64_t t0 = C.llama_time_us()
        C.llama_memory_seq_rm(ctx.mem, slot, -1, -1)
        ctx.set_block_causal(1)
        self.prefill_range(0, n_cached, ctx.n_ubatch)
        self.prefill_us = C.llama_time_us() - t0
        self.prefill_decode_us = self.decode_us
        return 0

    cdef int fill_draft(self, int n) except -1 nogil:
        """The draft (speculative), in the scheduler's shared draft pass: the pending token and
        masks up to the block's end, block-causally; each mask's row gives a draft."""
        cdef int p = self.frontier
        cdef int D = self._region_end() - p
        cdef int i
        self.n_draft = 0
        self.n_draft_rows = 0
        self.drafted_now = False
        if not self.speculative or D <= 0:
            return n
        self.draft_t0 = C.llama_time_us()
        # rows: with shifted rows the pending token's row and the masks' but the last, else the
        # masks' own; row i predicts position p + i either way
        self.put(n, p - 1, self.x[p - 1], self.shift)
        for i in range(D):
            self.put(n + 1 + i, p + i, self.mask_id, (not self.shift) or i < D - 1)
        self.n_draft_rows = D
        self.drafted_now = True
        return n + D + 1

    cdef int read_draft(self) except -1:
        cdef int i, tok
        cdef int V = self.n_vocab
        cdef int device = -1
        cdef const float * row
        for i in range(self.n_draft_rows):
            row = self.ctx.logits_row(self.draft_row_start + i)
            if row == NULL:
                self.ctx.step_logits(False, &device)       # raises with the reason
                raise RuntimeError("the draft pass's logits cannot be read")
            with nogil:
                tok = _argmax(row, V, self.mask_id)
            if tok < 0:
                from llamadiff.errors import DecodeError
                raise DecodeError("the draft pass produced no finite logits (NaN in every entry of a row): "
                                  "broken weights or an unsupported back end")
            self.draft[i] = tok
        self.n_draft = self.n_draft_rows
        self.draft_us += C.llama_time_us() - self.draft_t0
        return 0

    cdef int drop_draft(self) except -1 nogil:
        # the pass's KV goes: the pending token's causal KV comes with the verify pass
        if self.drafted_now:
            C.llama_memory_seq_rm(self.ctx.mem, self.slot, self.frontier - 1, -1)
            self.drafted_now = False
        return 0

    cdef int fill(self, int n) except -1 nogil:
        """The causal pass: the pending token and the drafts, a row for each (row j predicts
        position frontier + j)."""
        cdef int p = self.frontier
        cdef int j
        self.put(n, p - 1, self.x[p - 1], True)
        self.counters[0] = (<uint64_t> p << 16)
        for j in range(self.n_draft):
            self.put(n + 1 + j, p + j, self.draft[j], True)
            self.counters[1 + j] = (<uint64_t> (p + 1 + j) << 16)
        self.n_rows = 1 + self.n_draft
        self.n_masked = self._region_end() - p
        self.plain = True
        self.kv_tokens = p + self.n_draft
        self.region_start = self.region * self.block_length
        self.region_length = self._region_end() - self.region_start
        self.region_steps = self.region_length
        return n + 1 + self.n_draft

    cdef int score(self) except -1 nogil:
        check_rows(self.rows.data(), self.n_rows)
        return 0

    cdef int commit(self) except -1 nogil:
        """The longest prefix of drafts the causal rows agree with, plus the row after it."""
        cdef int p = self.frontier
        cdef int k = 0, j, count
        while k < self.n_draft and self.draft[k] == self.rows[k].token:
            k += 1
        count = k + 1
        if p + count > self.n_total:
            count = self.n_total - p
        self.step_positions.clear()
        self.step_tokens.clear()
        for j in range(count):
            self.x[p + j] = self.rows[j].token
            self.step_positions.push_back(p + j)
            self.step_tokens.push_back(self.rows[j].token)
        # the cells of p - 1 ... p + k - 1 hold committed tokens' causal KV; the drafts after
        # them were wrong (or are past the end), and p + count - 1 is the new pending token
        C.llama_memory_seq_rm(self.ctx.mem, self.slot, p + count - 1, -1)
        self.frontier = p + count
        self.n_filled = count
        if self.speculative:
            self.n_verify += 1
            self.n_drafted += self.n_draft
            self.n_accepted += k if k < count else count
            self.n_kept += count
        self.committed_log.push_back(count)
        return count

    cdef int end_step(self) except -1:
        """A region (block) is done when the frontier passes its end; a verify pass keeps at
        most one token past the block (drafts end there), which opens the next one."""
        cdef int end = self._region_end()
        self.step_region, self.step_index = self.region, self.step
        self.step_left = max(0, end - self.frontier)
        self.step += 1
        self.region_done = self.frontier >= end
        if self.region_done:
            self.steps_per_region.append(self.step)
            self.region += 1
            self.step = 0
        return self.region_done

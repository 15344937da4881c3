# cython: language_level=3
"""The diffusion engine: a scheduler that advances a set of sequences one step at a time,
with one ``llama_decode`` per step for all of them.

A ``Sequence`` is one generation in a slot (llama.cpp sequence id) of the scheduler's
context. What differs between diffusion families -- which tokens a step decodes, how the KV
cache is kept, the step schedule -- is a ``Sequence`` subclass (``llamadiff._block``,
``llamadiff._full``); which masked positions a step commits is the sequence's
``RemaskPolicy`` (``llamadiff.policy``); where logits rows are sampled is the scheduler's
``RowSampler`` (``llamadiff._sampling``, ``llamadiff.cuda``, ``llamadiff._backend``).

One step of the scheduler, for every active sequence (GIL released except around Python
callbacks):

    prepare()        decodes of its own that must precede the shared one (long recompute
                     prefixes, CFG's unconditional pass); with the GIL
    fill()           its tokens of this step into the shared batch, logits on the rows that
                     predict its masked positions
    -- one llama_decode --
    after_decode()   KV bookkeeping (drop what the next step recomputes)
    (rows sampled by the scheduler, grouped across sequences with equal settings, or by
     sample() for sequences whose rows are not plain)
    score()          the sampled rows into the StepView
    commit()         policy.select(view), the chosen positions written
    end_step()       advance the schedule; 1 when a region (block) finished (the base class
                     keeps the region bookkeeping; a subclass extends it)
"""

from libc.stdint cimport int32_t, int64_t, uint64_t
from libcpp.vector cimport vector
from cpython.ref cimport PyObject

from llamadiff._core cimport Context, Model
from llamadiff._sampling cimport SamplingParams, RowResult, RowSampler
from llamadiff.policy cimport RemaskPolicy, StepView


cdef class Sequence:
    cdef Context ctx                 # set by Scheduler.add
    cdef readonly Model model
    cdef readonly RemaskPolicy policy
    cdef SamplingParams sp
    cdef vector[int32_t] x           # the whole sequence: prompt, committed tokens, masks
    cdef readonly int slot           # llama.cpp sequence id (-1: not in a scheduler)
    cdef readonly int companion      # a second sequence id in the same step (-1: none)
    cdef int n_seq_ids               # 2: the sequence decodes a companion pass (guidance)
    cdef readonly int n_prompt, n_total, mask_id, n_vocab
    cdef readonly int region         # index of the active region (block)
    cdef readonly int n_regions
    cdef readonly int step           # step inside the active region
    cdef int min_commit              # least a step commits (1: block diffusion)
    cdef readonly int block_causal   # the context's block-causal attention (0: none)
    cdef readonly bint region_done   # the last step finished a region
    cdef readonly int step_region, step_index, step_left   # the last step: region, step, masks left

    # this step (set by fill)
    cdef int n_masked
    cdef int row_start, n_rows       # its rows in the shared logits
    cdef bint rows_full              # a row for every position of the region, masked or not (the
                                     # step keeps one shape): masked i reads row positions[i]
    cdef vector[uint64_t] row_counters   # the sampler's RNG counter per row when rows_full
    cdef int n_step_tokens           # its tokens in the shared batch
    cdef int kv_tokens               # KV cells it holds during the step
    cdef bint plain                  # row i predicts positions[i]: the scheduler samples it
    cdef bint force_all              # the schedule's last step: commit every masked position
    cdef bint skip_commit            # sample() already committed (llama.cpp-compatible mode)
    cdef bint host_logits            # its rows must be in llama.cpp's host buffer (sample() edits
                                     # them in place): the step's logits do not stay on the device
    cdef int region_start, region_length, region_steps, n_transfer
    cdef vector[int32_t] positions   # offsets of the masked positions inside the region
    cdef vector[int32_t] x0, chosen
    cdef vector[float] prob, entropy, margin
    cdef vector[uint64_t] counters
    cdef vector[RowResult] rows
    cdef vector[int32_t] step_positions, step_tokens   # what this step committed (absolute)
    cdef vector[int32_t] committed_log
    cdef int max_rows                # most masked positions a step can have (scratch size)
    cdef int max_out_rows            # most logits rows a step can ask for
    cdef int max_step_tokens         # most tokens a step puts in the shared batch
    cdef readonly bint started       # bound once: a sequence runs in one scheduler, start to end
    cdef vector[float] work          # policy scratch (StepView.work)
    # token editing (a policy with edits): rows for every position of the region (rows_full),
    # the placed tokens the policy sees, what a step filled and edited, steps after the last mask
    cdef bint edits
    cdef int n_placed, n_filled, n_edits, n_post
    cdef vector[int32_t] placed, placed_tokens, placed_x0, edit_chosen
    cdef vector[float] placed_prob, placed_entropy, placed_margin

    # telemetry
    cdef readonly long n_decode, n_decode_tokens, n_edits_total
    cdef readonly double decode_us, sample_us, select_us, prefill_us, prefill_decode_us
    cdef readonly list steps_per_region

    cdef int _init_sequence(self, Model model, prompt, int n_generate_total, RemaskPolicy policy,
                            float temperature, int top_k, float top_p, unsigned long long seed) except -1
    cdef int _size_scratch(self, int n_rows) except -1
    cdef void put(self, int b, int32_t pos, int32_t token, bint want_logits) noexcept nogil
    cdef void put_seq(self, int b, int32_t pos, int32_t token, bint want_logits, int seq_id) noexcept nogil
    cdef int decode_own(self, int n) except -1
    cdef int prefill_range(self, int start, int end, int chunk) except -1
    cdef int account_decode(self, int n, double us) noexcept nogil

    # hooks (see the module doc)
    cdef int bind(self, Context ctx, int slot, int companion) except -1
    cdef int prepare(self) except -1
    # a pass before the step's decode, shared by the sequences that take part in it (speculation's
    # drafts): fill_draft writes its tokens into the shared batch (rows from draft_row_start),
    # read_draft reads its rows after the decode (with the GIL), under block-causal attention of
    # draft_attention positions; drop_draft removes what the pass left in the KV cache
    cdef bint drafts
    cdef int draft_attention, draft_row_start, n_draft_rows
    cdef int fill_draft(self, int n) except -1 nogil
    cdef int read_draft(self) except -1
    cdef int drop_draft(self) except -1 nogil
    cdef int fill(self, int n) except -1 nogil
    cdef int after_decode(self) except -1 nogil
    cdef int sample(self, const float * logits, int device, RowSampler sampler) except -1 nogil
    cdef int score(self) except -1 nogil
    cdef int commit(self) except -1 nogil
    cdef int end_step(self) except -1


cdef class Scheduler:
    cdef readonly Context ctx
    cdef readonly RowSampler sampler
    cdef list _sequences             # every sequence of the scheduler, in slot order
    cdef tuple _active               # the unfinished ones (what step() runs), and the same as
    cdef vector[PyObject *] _active_ptrs   # an array for its loops (the tuple holds the references)
    cdef bint _stale                 # the set changed: make both again before the next step
    cdef bint _stepping              # inside step(): a nested call is an error
    cdef vector[RowResult] rows
    cdef vector[uint64_t] counters
    cdef int rows_reserved
    cdef readonly bint in_place      # the sampler reads the logits where they were computed
    cdef readonly long n_in_place    # steps whose rows were sampled where they were computed
    cdef readonly long long logits_copied_bytes   # logits llama.cpp copied to its host buffer
    cdef long _reused_at_start       # llama.cpp's count of reused graphs when this scheduler began
    cdef readonly long n_steps, n_decode, n_decode_tokens, kv_tokens_peak
    cdef readonly double decode_us, sample_us, select_us, prefill_us

    cdef _free(self, Sequence seq)
    cdef _refresh_active(self)
    cdef int _decode_shared(self, PyObject ** active, size_t m, int n, bint on_device, bint drafting) except -1
    cdef int _draft_pass(self, PyObject ** active, size_t m) except -1
    cdef tuple _step(self, PyObject ** active, size_t m, bint in_place)

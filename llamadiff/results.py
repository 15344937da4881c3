"""What a generation returns and how it is cut: ``GenerationResult``, ``StreamChunk``, the stop
search (``StopMatcher`` per call, ``StopScan`` per sequence), a sequence's ``Output`` while it
runs, and its statistics.
"""

from __future__ import annotations

import codecs
import dataclasses
import time
from typing import Optional

from llamadiff._core import Model

__all__ = ["GenerationResult", "StreamChunk", "StopMatcher", "StopScan", "Output", "Running",
           "sequence_stats", "transfer_stats"]


@dataclasses.dataclass
class GenerationResult:
    text: str
    tokens: list            # generated token ids, cut at the first stop
    stop_reason: str        # "stop", "length", "cancelled", "interrupted" or "error"
    stats: dict
    prompt_tokens: list
    error: Optional[str] = None   # why this prompt of a batch failed (stop_reason "error")


@dataclasses.dataclass
class StreamChunk:
    text: str               # text added by this block (UTF-8 safe across chunks)
    tokens: list            # token ids added by this block
    block_index: int
    stop_reason: Optional[str] = None   # set on the last chunk
    index: Optional[int] = None         # the prompt's index when streaming a list of prompts


class StopMatcher:
    """The stops of a call (token ids and strings), checked once; each sequence searches its
    text with a ``StopScan`` of its own."""

    def __init__(self, model: Model, stop):
        self.ids = set(model.eog_token_ids if stop is None else ())
        self.strings = []
        for item in stop or ():
            if isinstance(item, int):
                if not 0 <= item < model.n_vocab:
                    raise ValueError(f"stop token id {item} is out of range")
                self.ids.add(item)
            else:
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(f"stop string {item!r} is not valid UTF-8 text") from None
                ids = model.tokenize(item, add_special=False, parse_special=True)
                if len(ids) == 1 and model.token_to_piece(ids[0], special=True) == item:
                    self.ids.add(ids[0])      # a single (special) token: match by id
                else:
                    self.strings.append(item)
        self.longest = max((len(x) for x in self.strings), default=0)


class StopScan:
    """One sequence's search for its first stop, fed its generated tokens a finished block at
    a time. Each token is looked at once, and stop strings are searched for only in the text
    the newest token completes plus the characters before it that a stop could start in: the
    cost stays linear in the generated text."""

    def __init__(self, model: Model, stops: StopMatcher):
        self.model = model
        self.stops = stops
        self.tail = ""                # the last characters of the text, for stops that span tokens
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def first_stop(self, new: list, final: bool = False) -> Optional[int]:
        """Index in ``new`` (the tokens that follow those of earlier calls) of the first token
        to drop (the stop itself), or None. ``final``: no tokens follow, so bytes of an
        unfinished character at the end count as the replacement character."""
        ids, strings, keep = self.stops.ids, self.stops.strings, self.stops.longest - 1
        for i, token in enumerate(new):
            if token in ids:
                return i
            if strings:
                piece = self._decoder.decode(self.model.token_bytes(token, special=True),
                                             final=final and i == len(new) - 1)
                window = self.tail + piece
                if any(x in window for x in strings):
                    return i
                self.tail = window[-keep:] if keep > 0 else ""
        return None


class Output:
    """The generated tokens of one sequence, taken a finished block at a time: cut at the
    first stop, capped at max_new_tokens, and decoded to text safely across blocks."""

    def __init__(self, model: Model, stops: StopMatcher, max_new_tokens: int):
        self.model = model
        self.stops = stops
        self.max_new_tokens = max_new_tokens
        self.tokens: list = []
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._scan = StopScan(model, stops)

    def add(self, new: list, last: bool) -> tuple:
        """Take a finished block's tokens; returns (tokens kept, stop reason or None).
        ``last``: the sequence has no more blocks."""
        new = new[:self.max_new_tokens - len(self.tokens)]
        reason = None
        cut = self._scan.first_stop(new, final=last or len(self.tokens) + len(new) >= self.max_new_tokens)
        if cut is not None:
            new = new[:cut]
            reason = "stop"
        elif last or len(self.tokens) + len(new) >= self.max_new_tokens:
            reason = "length"
        self.tokens += new
        return new, reason

    def text(self, new: list, final: bool) -> str:
        """Text of tokens just added (an incomplete UTF-8 sequence waits for the next block)."""
        return self._decoder.decode(b"".join(self.model.token_bytes(t, special=False) for t in new),
                                    final=final)

    def result(self, reason: str, stats: dict, prompt_ids: list) -> GenerationResult:
        return GenerationResult(self.model.detokenize(self.tokens), self.tokens, reason, stats, prompt_ids)


class Running:
    """A sequence while it runs: the caller's handle of it (``key``: a prompt's index, a
    request), its output, start time, slot, sampler route, options and prompt."""
    __slots__ = ("key", "out", "t0", "slot", "sampler", "cfg", "ids")

    def __init__(self, key, out: Output, t0: float, slot: int, sampler: str, cfg, ids: list):
        self.key = key
        self.out = out
        self.t0 = t0
        self.slot = slot
        self.sampler = sampler
        self.cfg = cfg
        self.ids = ids


def sequence_stats(seq, run: Running, context_ms: float, slot: bool, extra: dict) -> dict:
    """A result's ``stats`` (docs/GENERATION.md, "Statistics"): ``context_ms`` spent making the
    context (counted for a call's only sequence), ``slot``: name the sequence's slot (a batch),
    ``extra``: the family's entries."""
    cfg = run.cfg
    wall_ms = (time.perf_counter() - run.t0) * 1e3
    generated = run.out.tokens
    committed = seq.committed_per_step()
    stats = {
        "prompt_tokens": seq.n_prompt,
        "generated_tokens": len(generated),
        "block_length": cfg.block_length,
        "sampler": run.sampler,
        "steps": cfg.steps,
        "context_created": context_ms > 0,
        "context_ms": context_ms,
        "prefill_ms": seq.prefill_us / 1e3,
        "decode_calls": seq.n_decode,
        "decode_tokens": seq.n_decode_tokens,
        "decode_ms": seq.decode_us / 1e3,
        "sampling_ms": seq.sample_us / 1e3,
        "selection_ms": seq.select_us / 1e3,
        "wall_ms": wall_ms,
        "steps_per_block": list(seq.steps_per_region),
        "committed_per_step": committed,
        "committed": sum(committed),
        "tokens_per_step": (sum(committed) / len(committed)) if committed else 0.0,
        "tokens_per_second": len(generated) / (wall_ms / 1e3) if wall_ms > 0 else 0.0,
    }
    stats.update(extra)
    if slot:
        stats["slot"] = run.slot
    if cfg.profile:
        # where the wall time went; "python" is everything else (batch filling,
        # KV bookkeeping, stop checks, streaming, callbacks, the interpreter)
        parts = {"context_ms": context_ms, "prefill_ms": seq.prefill_us / 1e3,
                 "decode_ms": (seq.decode_us - seq.prefill_decode_us) / 1e3,
                 "sampling_ms": seq.sample_us / 1e3, "selection_ms": seq.select_us / 1e3}
        parts["python_ms"] = max(0.0, wall_ms - sum(parts.values()))
        stats["profile"] = parts
    return stats


def transfer_stats(sched) -> dict:
    """Where a call's logits were sampled -- steps that read them where they were computed
    (``sampler="device"``), the bytes of logits llama.cpp copied to the host otherwise -- and
    its decodes that reused the previous decode's graph (one step shape: a CUDA graph replay)."""
    return {"steps_in_place": sched.n_in_place, "logits_to_host_bytes": sched.logits_copied_bytes,
            "graphs_reused": sched.graphs_reused}

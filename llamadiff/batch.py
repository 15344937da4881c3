"""The one driver of a running batch (``RunningBatch``), under both front ends: the Generator's
calls and the serving ``Batcher``.

Sequences are admitted into a scheduler's free slots, stepped together (one decode for all of
them per step), and each block a sequence finishes is cut at the stops and handed back
(``Finished``); a sequence that stops is retired at once, freeing its slot and its KV cells.
What to do with a finished block -- yield a chunk, feed a request's queue, update a progress
bar -- is the front end's.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple, Optional

from llamadiff.engine import Scheduler, StepInfo
from llamadiff.results import GenerationResult, Output, Running, StopMatcher, sequence_stats

__all__ = ["RunningBatch", "Finished"]


class Finished(NamedTuple):
    """A block one sequence finished in a step: its new tokens after the stops' cut, their text
    (when asked for), the block's index, and the stop reason when the sequence is done."""
    seq: Any
    run: Running
    tokens: list
    text: str
    region: int
    reason: Optional[str]


class RunningBatch:
    """The sequences running on one scheduler (``running``: Sequence -> Running)."""

    def __init__(self, model, family, scheduler: Scheduler, context_ms: float = 0.0):
        self.model = model
        self.family = family
        self.scheduler = scheduler
        self.context_ms = context_ms       # spent making the scheduler's context (0.0: reused)
        self.running: dict = {}

    def __len__(self) -> int:
        return len(self.running)

    def admit(self, key, ids: list, cfg, policy, stops: StopMatcher, t0: Optional[float] = None):
        """Start a sequence of prompt ``ids`` (``key``: the caller's handle of it, kept as
        ``Running.key``); ValueError / TypeError when it cannot run. Returns the Sequence."""
        seq = self.family.sequence(self.model, ids, cfg, policy)
        self.scheduler.add(seq)
        self.running[seq] = Running(key, Output(self.model, stops, cfg.max_new_tokens),
                                    time.perf_counter() if t0 is None else t0, seq.slot,
                                    self.scheduler.sampler.name, cfg, ids)
        return seq

    def step(self, text: bool = True) -> tuple:
        """One step of every running sequence: (the sequences stepped, [Finished, ...]).
        ``text``: decode each finished block's text (a call that does not stream needs only the
        result's, decoded once at the end); keep to one choice for a batch's whole life."""
        stepped, done = self.scheduler.step()
        finished = []
        for seq in done:
            run = self.running[seq]
            region = seq.region - 1
            start, end = seq.region_bounds(region)
            new, reason = run.out.add(seq.tokens_between(max(start, seq.n_prompt), end), last=seq.done)
            finished.append(Finished(seq, run, new, run.out.text(new, reason is not None) if text else "",
                                     region, reason))
        return stepped, finished

    def step_info(self, seq, index) -> StepInfo:
        """What ``seq``'s last step did, for a callback (``index``: the prompt's, or None)."""
        positions, tokens = seq.last_step()
        start, end = seq.region_bounds(seq.step_region)
        return StepInfo(seq.step_region, seq.step_index, positions, tokens, seq.step_left, index, start, end)

    def result(self, seq, reason: str, context_ms: float = 0.0, slot: bool = False) -> GenerationResult:
        """The result of a sequence as it stands; its stats count ``context_ms`` for making the
        context (a call's only sequence), and name its slot when ``slot``."""
        run = self.running[seq]
        stats = sequence_stats(seq, run, context_ms, slot, self.family.stats(seq, run.cfg))
        return run.out.result(reason, stats, run.ids)

    def retire(self, seq, reason: str, context_ms: float = 0.0, slot: bool = False) -> GenerationResult:
        """Take a sequence out (its slot and KV cells free at once); returns its result."""
        result = self.result(seq, reason, context_ms, slot)
        del self.running[seq]
        self.scheduler.remove(seq)
        return result

    def clear(self) -> None:
        """Free the scheduler's slots (the sequences' records stay readable for results)."""
        self.scheduler.clear()

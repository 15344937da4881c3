"""Serving: requests from many threads join a running batch (``Engine``).

An ``Engine`` owns one model and one context, and a background thread that drives the
engine's ``Scheduler``. ``submit(prompt, ...)`` may be called from any thread; it checks the
request at once (bad options and over-long prompts raise in the caller's thread), queues it and
returns a ``Request`` handle: ``result()`` waits for the ``GenerationResult``, iterating yields
its ``StreamChunk``s as blocks finish, ``cancel()`` stops it.

Requests join the running batch between steps and leave when they stop, freeing their KV cells
at once (continuous batching over time). Which requests share a step: the requests of one
*batch key* -- block diffusion: the block length (one block-causal mask per context) and the
cache mode; full diffusion: the RNG mode and whether guidance is on. Requests are served first
come, first served: the oldest waiting request's key is the running key; requests with another
key wait until the running batch has drained, then the oldest of them sets the next key (so no
request waits behind later arrivals of a busy key forever). Modes that run alone
(``cache=False``, ``rng="llama.cpp"``) run one request at a time.

Greedy tokens of a request equal a solo ``Generator.generate`` run, with the float-rounding
caveat of batched generation (docs/GENERATION.md).
"""

from __future__ import annotations

import collections
import itertools
import queue as queue_module
import threading
import time
from typing import Callable, Iterator, Optional

from llamadiff.engine import Scheduler
from llamadiff.errors import LlamaDiffError
from llamadiff.generator import (GenerationConfig, GenerationResult, Generator, StreamChunk, _Output,
                                 _Running, _StopMatcher)

__all__ = ["Engine", "Request", "QueueFullError", "EngineClosedError"]


class QueueFullError(LlamaDiffError):
    """The engine's queue of waiting requests is full (``max_queue``): try again later."""


class EngineClosedError(LlamaDiffError):
    """The engine is closed (or closing) and takes no new requests."""


_DONE = object()
_ids = itertools.count(1)


class Request:
    """A submitted generation: wait for it (``result``), stream it (iterate), or ``cancel`` it."""

    def __init__(self, engine: "Engine", prompt_tokens: list, cfg: GenerationConfig, key: tuple,
                 listener: Optional[Callable] = None):
        self.id = next(_ids)
        self.prompt_tokens = prompt_tokens
        self.config = cfg
        self.key = key
        self.submitted = time.perf_counter()
        self._engine = engine
        self._chunks: "queue_module.SimpleQueue" = queue_module.SimpleQueue()
        self._listener = listener
        self._done = threading.Event()
        self._result: Optional[GenerationResult] = None
        self._cancelled = False
        self._iterated = False

    # -- for callers ------------------------------------------------------------------------

    def result(self, timeout: Optional[float] = None) -> GenerationResult:
        """The GenerationResult, once the request has finished (TimeoutError after ``timeout``)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} did not finish within {timeout} s")
        return self._result

    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop the request: it leaves the batch before the next step (stop_reason "cancelled")."""
        self._cancelled = True
        self._engine._wake()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def __iter__(self) -> Iterator[StreamChunk]:
        """The request's chunks, one per finished block, the last one with its stop_reason."""
        if self._iterated:
            raise RuntimeError("a request's chunks can be iterated once")
        self._iterated = True
        while True:
            item = self._chunks.get()
            if item is _DONE:
                return
            yield item

    # -- for the engine thread ----------------------------------------------------------------

    def _emit(self, chunk: StreamChunk) -> None:
        self._chunks.put(chunk)
        if self._listener is not None:
            self._listener(chunk)

    def _finish(self, result: GenerationResult) -> None:
        self._result = result
        self._chunks.put(_DONE)
        self._done.set()
        if self._listener is not None:
            self._listener(result)


class Engine:
    """One model, one context, many requests: a background thread runs the batch.

    Parameters as ``Generator`` (``model``, ``n_ctx`` -- the bound of one request's prompt +
    generation --, ``n_threads``, ``n_gpu_layers``, ``flash_attn``, ``type_k``, ``type_v``,
    ``sampler``), plus ``n_parallel`` (requests decoded together, default 16) and
    ``max_queue`` (requests that may wait; a full queue raises QueueFullError, default 256).
    ``config``: the GenerationConfig that requests' options start from.
    """

    def __init__(self, model=None, *, n_parallel: int = 16, max_queue: int = 256,
                 config: Optional[GenerationConfig] = None, **generator_args):
        if isinstance(n_parallel, bool) or not isinstance(n_parallel, int) or n_parallel < 1:
            raise ValueError(f"n_parallel must be an int >= 1, got {n_parallel!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
            raise ValueError(f"max_queue must be an int >= 0, got {max_queue!r}")
        self.generator = Generator(model, **generator_args)
        self.model = self.generator.model
        self.n_parallel = n_parallel
        self.max_queue = max_queue
        self.config = config if config is not None else GenerationConfig()
        if not isinstance(self.config, GenerationConfig):
            raise TypeError("config must be a GenerationConfig")
        self._family = self.generator._family
        self._waiting: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._closing = False
        self._cancel_all = False
        self.stats = {"submitted": 0, "completed": 0, "cancelled": 0, "errors": 0, "rejected": 0,
                      "steps": 0, "decode_calls": 0}
        self._running_count = 0
        self._thread = threading.Thread(target=self._loop, name="llamadiff-engine", daemon=True)
        self._thread.start()

    # -- the public API ---------------------------------------------------------------------

    def submit(self, prompt, config: Optional[GenerationConfig] = None, *, chat: bool = False,
               listener: Optional[Callable] = None, **options) -> Request:
        """Queue one prompt (text, token ids or chat messages). Options are GenerationConfig's
        fields (``callback``, ``progress`` and ``profile`` are not available here). Bad options,
        an over-long prompt or a full queue raise here, in the caller's thread.

        ``listener``: called in the engine's thread with each StreamChunk and then the
        GenerationResult (for event loops: hand them over with a thread-safe call).
        """
        if self._closing:
            raise EngineClosedError("the engine is closed")
        for name in ("callback", "progress", "profile"):
            if options.get(name):
                raise ValueError(f"{name} is not available for engine requests")
        cfg = self.generator._config(config if config is not None else self.config, options)
        ids = self.generator.prompt_tokens(prompt, chat=chat)
        self._family.check_prompt(self.generator, cfg, ids, True)
        key = (self._family.batch_key(cfg), self._family.runs_alone(cfg))
        request = Request(self, ids, cfg, key, listener)
        with self._cv:
            if self._closing:
                raise EngineClosedError("the engine is closed")
            if len(self._waiting) >= self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFullError(f"{len(self._waiting)} requests are waiting (max_queue={self.max_queue})")
            self._waiting.append(request)
            self.stats["submitted"] += 1
            self._cv.notify()
        return request

    def generate(self, prompt, config: Optional[GenerationConfig] = None, **options) -> GenerationResult:
        """``submit(...).result()``."""
        return self.submit(prompt, config, **options).result()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self._running_count

    def close(self, cancel: bool = False, timeout: Optional[float] = None) -> None:
        """Take no new requests; finish the ones queued and running (``cancel=True``: cancel
        them), stop the thread and free the model. Safe to call twice."""
        with self._cv:
            self._closing = True
            self._cancel_all = self._cancel_all or cancel
            self._cv.notify()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.generator.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(cancel=exc[0] is not None)

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    # -- the engine thread --------------------------------------------------------------------

    def _loop(self) -> None:
        gen = self.generator
        sched = None
        key = None
        running: dict = {}            # Sequence -> (Request, _Running)
        with gen._lock:
            while True:
                with self._cv:
                    while not self._waiting and not running and not self._closing:
                        self._cv.wait()
                    if self._closing and self._cancel_all:
                        for request in list(self._waiting):
                            request._finish(GenerationResult("", [], "cancelled", {}, request.prompt_tokens))
                            self.stats["cancelled"] += 1
                        self._waiting.clear()
                        for _, (request, _) in running.items():
                            request._cancelled = True
                    if self._closing and not self._waiting and not running:
                        break
                    # requests cancelled while waiting leave the queue at once
                    for request in [r for r in self._waiting if r.cancelled]:
                        self._waiting.remove(request)
                        request._finish(GenerationResult("", [], "cancelled", {}, request.prompt_tokens))
                        self.stats["cancelled"] += 1
                    if not running and self._waiting:
                        key = self._waiting[0].key       # the oldest request sets the batch key
                    admit = []
                    while self._waiting and self._waiting[0].key == key and len(running) + len(admit) < self._slots(key):
                        admit.append(self._waiting.popleft())
                # running requests that were cancelled leave before the step
                for seq, (request, run) in list(running.items()):
                    if request.cancelled:
                        self._retire(sched, running, seq, "cancelled")
                if admit:
                    sched = self._admit(sched, admit, running)
                self._running_count = len(running)
                if not running:
                    continue
                try:
                    _, finished = sched.step()
                except KeyboardInterrupt:
                    for seq in list(running):
                        self._retire(sched, running, seq, "interrupted")
                    continue
                except Exception as exc:        # a failed decode fails the requests of that step
                    for seq in list(running):
                        self._retire(sched, running, seq, "error", error=f"{type(exc).__name__}: {exc}")
                    continue
                self.stats["steps"] += 1
                for seq in finished:
                    request, run = running[seq]
                    region = seq.region - 1
                    start, end = seq.region_bounds(region)
                    new, reason = run.out.add(seq.tokens_between(max(start, seq.n_prompt), end), last=seq.done)
                    request._emit(StreamChunk(run.out.text(new, reason is not None), new, region, reason))
                    if reason is not None:
                        self._retire(sched, running, seq, reason, emitted=True)
                self._running_count = len(running)
            if sched is not None:
                self.stats["decode_calls"] = sched.n_decode
                sched.clear()

    def _slots(self, key) -> int:
        return 1 if key[1] else self.n_parallel      # modes that run alone take one slot

    def _admit(self, sched, admit: list, running: dict):
        """Bind the admitted requests' sequences (a new scheduler when the key changed)."""
        gen = self.generator
        cfg = admit[0].config
        if sched is None or not running:
            # a new batch: its key may need another context (block length, memory kind)
            if sched is not None:
                sched.clear()
            if admit[0].key[1]:
                sched, _, _ = gen._scheduler(cfg, {0: admit[0].prompt_tokens}, 1, single=False)
            else:
                ctx, _ = gen._shared_context(*self._family.serving_context(gen, cfg, self.n_parallel))
                sched = Scheduler(ctx, gen._host_sampler)
        for request in admit:
            cfg = request.config
            stops = _StopMatcher(self.model, cfg.stop)
            try:
                seq = self._family.sequence(self.model, request.prompt_tokens, cfg, self._family.policy(cfg))
                sched.add(seq)
            except (ValueError, TypeError) as exc:
                if running and "n_ubatch" in str(exc):
                    with self._cv:               # no room in this step yet: wait at the front
                        self._waiting.appendleft(request)
                    continue
                request._finish(GenerationResult("", [], "error", {}, request.prompt_tokens, error=str(exc)))
                self.stats["errors"] += 1
                continue
            except KeyboardInterrupt:
                request._finish(GenerationResult("", [], "interrupted", {}, request.prompt_tokens))
                continue
            run = _Running(request.id, _Output(self.model, stops, cfg.max_new_tokens), request.submitted,
                           seq.slot, sched.sampler.name)
            running[seq] = (request, run)
        return sched

    def _retire(self, sched, running: dict, seq, reason: str, emitted: bool = False, error=None) -> None:
        request, run = running.pop(seq)
        sched.remove(seq)
        if not emitted:
            request._emit(StreamChunk(run.out.text([], True), [], -1, reason))
        stats = self.generator._stats(seq, request.config, run, 0.0, True)
        stats["queued_ms"] = 0.0
        result = run.out.result(reason, stats, request.prompt_tokens)
        result.error = error
        request._finish(result)
        if reason == "cancelled":
            self.stats["cancelled"] += 1
        elif reason == "error":
            self.stats["errors"] += 1
        else:
            self.stats["completed"] += 1

"""Serving: requests from many threads join a running batch (``Batcher``).

A ``Batcher`` owns one model and one context, and a background thread that drives one
``RunningBatch`` (``llamadiff.batch``, the driver the Generator's calls use too). ``submit(prompt, ...)`` may be called from any thread; it checks the
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
import logging
import queue as queue_module
import threading
import time
from typing import Callable, Iterator, Optional

from llamadiff.batch import RunningBatch
from llamadiff.config import GenerationConfig
from llamadiff.errors import LlamaDiffError
from llamadiff.generator import Generator
from llamadiff.results import GenerationResult, StopMatcher, StreamChunk

__all__ = ["Batcher", "Request", "QueueFullError", "BatcherClosedError", "AboveLimitError", "Engine",
           "EngineClosedError"]

log = logging.getLogger("llamadiff")


class QueueFullError(LlamaDiffError):
    """The batcher's queue of waiting requests is full (``max_queue``): try again later."""


class BatcherClosedError(LlamaDiffError):
    """The batcher is closed (or closing) and takes no new requests."""


class AboveLimitError(LlamaDiffError, ValueError):
    """A request asks for more than a limit given to ``submit``: ``option`` (GenerationConfig's
    name), its ``value`` and the ``limit``."""

    def __init__(self, option: str, value: int, limit: int):
        self.option, self.value, self.limit = option, value, limit
        super().__init__(f"{option}={value} is above the limit of {limit}")


_DONE = object()
_ids = itertools.count(1)


class Request:
    """A submitted generation: wait for it (``result``), stream it (iterate), or ``cancel`` it."""

    def __init__(self, batcher: "Batcher", prompt_tokens: list, cfg: GenerationConfig, key: tuple,
                 stops: StopMatcher, step_tokens: int, listener: Optional[Callable] = None):
        self.id = next(_ids)
        self.prompt_tokens = prompt_tokens
        self.config = cfg
        self.key = key
        self.stops = stops                  # built in the caller's thread (it may raise there)
        self.step_tokens = step_tokens      # tokens one of its steps puts in the shared batch
        self.submitted = time.perf_counter()
        self.admitted: Optional[float] = None
        self._batcher = batcher
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
        self._batcher._wake()

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

    # -- for the batcher's thread -------------------------------------------------------------

    def _emit(self, chunk: StreamChunk) -> None:
        self._chunks.put(chunk)
        self._notify(chunk)

    def _finish(self, result: GenerationResult) -> None:
        if self._done.is_set():
            return
        self._result = result
        self._chunks.put(_DONE)
        self._done.set()
        self._notify(result)

    def _end(self, reason: str, error: Optional[str] = None) -> None:
        """Finish a request that produced nothing (cancelled while waiting, failed to start)."""
        self._emit(StreamChunk("", [], -1, reason))
        self._finish(GenerationResult("", [], reason, {}, self.prompt_tokens, error=error))

    def _notify(self, item) -> None:
        if self._listener is None:
            return
        try:
            self._listener(item)
        except Exception:       # a listener's failure is its own: the batcher serves on
            log.exception("llamadiff: a request listener raised")


class Batcher:
    """One model, one context, many requests: a background thread runs the batch.

    Parameters as ``Generator`` (``model``, ``n_ctx`` -- the bound of one request's prompt +
    generation --, ``n_threads``, ``n_gpu_layers``, ``flash_attn``, ``type_k``, ``type_v``,
    ``sampler``), plus ``n_parallel`` (requests decoded together, 1..128, default 16) and
    ``max_queue`` (requests that may wait beyond the free slots; more raise QueueFullError,
    default 256). ``config``: the GenerationConfig that requests' options start from.

    If the batcher's thread fails (a bug, out of memory), every request still waiting or
    running finishes with stop_reason "error", and later ``submit`` calls raise
    BatcherClosedError naming the failure.
    """

    MAX_PARALLEL = 128      # llama.cpp's 256 sequence ids, two per guided request

    def __init__(self, model=None, *, n_parallel: int = 16, max_queue: int = 256,
                 config: Optional[GenerationConfig] = None, **generator_args):
        if isinstance(n_parallel, bool) or not isinstance(n_parallel, int) or not 1 <= n_parallel <= self.MAX_PARALLEL:
            raise ValueError(f"n_parallel must be an int in 1..{self.MAX_PARALLEL}, got {n_parallel!r}")
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 0:
            raise ValueError(f"max_queue must be an int >= 0, got {max_queue!r}")
        config = config if config is not None else GenerationConfig()
        if not isinstance(config, GenerationConfig):
            raise TypeError("config must be a GenerationConfig")
        self.config = config
        self.generator = Generator(model, **generator_args)
        self.model = self.generator.model
        self.n_parallel = n_parallel
        self.max_queue = max_queue
        self._family = self.generator.family
        self._waiting: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._closing = False
        self._cancel_all = False
        self._error: Optional[BaseException] = None
        self.stats = {"submitted": 0, "completed": 0, "cancelled": 0, "errors": 0, "rejected": 0, "steps": 0}
        self._running_count = 0
        self._batch: Optional[RunningBatch] = None     # of the running key (its sequences: Running.key is the Request)
        self._batch_key = None
        self._thread = threading.Thread(target=self._loop, name="llamadiff-batcher", daemon=True)
        self._thread.start()

    # -- the public API ---------------------------------------------------------------------

    def submit(self, prompt, config: Optional[GenerationConfig] = None, *, chat: bool = False,
               listener: Optional[Callable] = None, limits: Optional[dict] = None, **options) -> Request:
        """Queue one prompt (text, token ids or chat messages). Options are GenerationConfig's
        fields (``callback``, ``progress`` and ``profile`` are not available here). Bad options,
        an over-long prompt or a full queue raise here, in the caller's thread.

        ``listener``: called in the batcher's thread with each StreamChunk and then the
        GenerationResult; keep it short and non-blocking (for event loops: hand the item over
        with a thread-safe call). An exception in it is logged, not raised.

        ``limits``: {option: largest value}. An option the request sets above its limit raises
        AboveLimitError; one the request leaves to the model is held to the limit (a model whose
        default generation length is larger generates at most the limit).
        """
        self._check_open()
        for name in ("callback", "progress", "profile"):
            if options.get(name):
                raise ValueError(f"{name} is not available for served requests")
        limits = limits or {}
        for option, limit in limits.items():        # what the request asks for, before anything else
            value = options.get(option, options.get("max_tokens") if option == "max_new_tokens" else None)
            if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                raise AboveLimitError(option, value, limit)
        ids, cfg = self.generator.prepare(prompt, config if config is not None else self.config, options,
                                          chat=chat)
        held = {option: limit for option, limit in limits.items()
                if getattr(cfg, option) is not None and getattr(cfg, option) > limit}
        if held:            # the model's defaults, held to the limits
            ids, cfg = self.generator.prepare(prompt, config if config is not None else self.config,
                                              {**options, **held}, chat=chat)
        stops = StopMatcher(self.model, cfg.stop)
        key = (self._family.batch_key(cfg), self._family.runs_alone(cfg))
        request = Request(self, ids, cfg, key, stops, self._family.step_tokens(cfg, len(ids)), listener)
        with self._cv:
            self._check_open()
            room = self.max_queue + max(0, self.n_parallel - self._running_count)
            if len(self._waiting) >= room:
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

    @property
    def alive(self) -> bool:
        """The batcher takes requests (not closed, its thread did not fail)."""
        return not self._closing and self._error is None and self._thread.is_alive()

    def close(self, cancel: bool = False, timeout: Optional[float] = None) -> None:
        """Take no new requests; finish the ones queued and running (``cancel=True``: cancel
        them), stop the thread and free the model. Safe to call twice."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("close() from a listener (the batcher's own thread) would wait for itself")
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

    def _check_open(self) -> None:
        if self._error is not None:
            raise BatcherClosedError(f"the batcher stopped after an internal error: "
                                     f"{type(self._error).__name__}: {self._error}")
        if self._closing or not self._thread.is_alive():
            raise BatcherClosedError("the batcher is closed")

    def _wake(self) -> None:
        with self._cv:
            self._cv.notify()

    # -- the batcher's thread -----------------------------------------------------------------

    def _running_requests(self) -> list:
        return [] if self._batch is None else list(self._batch.running)

    def _loop(self) -> None:
        try:
            with self.generator.exclusive():
                while self._iteration():
                    pass
        except BaseException as exc:     # never leave a caller waiting on a dead thread
            self._error = exc
            log.exception("llamadiff: the batcher's thread failed")
            with self._cv:
                waiting = list(self._waiting)
                self._waiting.clear()
            for request in waiting:
                request._end("error", f"the batcher failed: {type(exc).__name__}: {exc}")
            for seq in self._running_requests():
                run = self._batch.running.pop(seq)
                run.key._end("error", f"the batcher failed: {type(exc).__name__}: {exc}")
        finally:
            self._running_count = 0
            if self._batch is not None:
                try:
                    self._batch.clear()
                except Exception:
                    pass

    def _iteration(self) -> bool:
        """One turn: retire cancelled requests, admit waiting ones, run one step. False: stop."""
        running = self._batch.running if self._batch is not None else {}
        ended = []
        with self._cv:
            while not self._waiting and not running and not self._closing:
                self._cv.wait()
            if self._closing and self._cancel_all:
                ended += self._waiting
                self._waiting.clear()
                for run in running.values():
                    run.key._cancelled = True
            # (the requests cancelled here still get their answer below, before the thread ends)
            stop = self._closing and not self._waiting and not running
            ended += [r for r in self._waiting if r.cancelled]
            for request in ended:
                if request in self._waiting:
                    self._waiting.remove(request)
            key = None
            if not running and self._waiting:
                key = self._waiting[0].key       # the oldest request sets the batch key
        for request in ended:                     # listeners run outside the lock
            request._end("cancelled")
            self.stats["cancelled"] += 1
        if stop:
            return False
        for seq, run in list(running.items()):
            if run.key.cancelled:
                self._retire(seq, "cancelled")
        if key is not None and not running:
            self._new_batch(key)
        for request in self._take_admissible():
            self._admit(request)
        batch = self._batch
        self._running_count = len(batch) if batch is not None else 0
        if not self._running_count:
            return True
        try:
            _, finished = batch.step()
        except Exception as exc:        # a failed decode fails the requests of that step
            for seq in list(batch.running):
                self._retire(seq, "error", error=f"{type(exc).__name__}: {exc}")
            return True
        self.stats["steps"] += 1
        for block in finished:
            block.run.key._emit(StreamChunk(block.text, block.tokens, block.region, block.reason))
            if block.reason is not None:
                self._retire(block.seq, block.reason, emitted=True)
        self._running_count = len(batch)
        return True

    def _new_batch(self, key) -> None:
        """A batch (on a context big enough) for requests of ``key``; the head request fails if
        its context cannot be made."""
        with self._cv:
            head = self._waiting[0] if self._waiting else None
        if head is None:
            return
        if self._batch is not None:
            self._batch.clear()
        self._batch = None
        try:
            alone = key[1]          # a mode that runs alone: the one-sequence context, sized for the head
            capacity = self._family.positions(head.config, len(head.prompt_tokens)) if alone else None
            self._batch, _ = self.generator.open_batch(head.config, slots=self.n_parallel, capacity=capacity)
            self._batch_key = key
        except Exception as exc:
            with self._cv:
                if self._waiting and self._waiting[0] is head:
                    self._waiting.popleft()
            head._end("error", f"{type(exc).__name__}: {exc}")
            self.stats["errors"] += 1

    def _take_admissible(self) -> list:
        """Waiting requests of the running key that fit a free slot and the step's token
        budget, oldest first (the first that does not fit stops the admission: FIFO)."""
        batch = self._batch
        if batch is None:
            return []
        budget = batch.scheduler.ctx.n_ubatch - sum(run.key.step_tokens for run in batch.running.values())
        slots = 1 if self._batch_key[1] else self.n_parallel
        admit = []
        with self._cv:
            while (self._waiting and self._waiting[0].key == self._batch_key
                   and len(batch) + len(admit) < slots):
                head = self._waiting[0]
                if head.step_tokens > budget and (batch.running or admit):
                    break
                admit.append(self._waiting.popleft())
                budget -= head.step_tokens
        return admit

    def _admit(self, request: Request) -> None:
        cfg = request.config
        request.admitted = time.perf_counter()
        try:
            self._batch.admit(request, request.prompt_tokens, cfg, self._family.policy(cfg), request.stops,
                              request.admitted)
        except Exception as exc:
            request._end("error", f"{exc}" if isinstance(exc, (ValueError, TypeError))
                         else f"{type(exc).__name__}: {exc}")
            self.stats["errors"] += 1

    def _retire(self, seq, reason: str, emitted: bool = False, error=None) -> None:
        run = self._batch.running[seq]
        request = run.key
        if not emitted:
            request._emit(StreamChunk(run.out.text([], True), [], -1, reason))
        result = self._batch.retire(seq, reason)
        result.stats["queued_ms"] = (request.admitted - request.submitted) * 1e3
        result.error = error
        request._finish(result)
        if reason == "cancelled":
            self.stats["cancelled"] += 1
        elif reason == "error":
            self.stats["errors"] += 1
        else:
            self.stats["completed"] += 1


#: the former names (llamadiff 0.1 before 2026-12), kept so existing code keeps working
Engine = Batcher
EngineClosedError = BatcherClosedError

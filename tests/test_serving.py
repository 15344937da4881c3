"""llamadiff.serving.Engine: requests from many threads join one running batch."""

import threading
import time

import pytest

from llamadiff import Generator, default_model, testing
from llamadiff.serving import Engine, EngineClosedError, QueueFullError

EXACT = dict(n_threads=1, type_k="f32", type_v="f32", flash_attn=False)
PROMPTS = ["47+38=", "sort 93715=", "rev python=", "copy k9x2=", "a1b7c4:b=", "12+9=", "sort 4817=", "rev abc="]


def _from_threads(engine, prompts, **options):
    out = [None] * len(prompts)

    def ask(i):
        out[i] = engine.submit(prompts[i], **options).result(timeout=120)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_threads_share_steps_and_get_solo_tokens():
    with Generator(default_model("block"), n_ctx=256, **EXACT) as gen:
        solo = [gen.generate(p, max_new_tokens=16).tokens for p in PROMPTS]
    with Engine(default_model("block"), n_parallel=9, n_ctx=256, **EXACT) as engine:
        # a long request keeps the batch running; the others join it between its steps
        long = engine.submit("rev python=", max_new_tokens=160, stop=["never"])
        next(iter(long))
        results = _from_threads(engine, PROMPTS, max_new_tokens=16)
        assert [r.tokens for r in results] == solo
        assert [r.text for r in results[:2]] == ["85", "13579"]
        results.append(long.result(120))
        assert engine.stats["completed"] == 9
        # shared steps: fewer than the requests' own steps added up
        assert engine.stats["steps"] < sum(len(r.stats["committed_per_step"]) for r in results)


def test_full_diffusion_requests_batch_too(tmp_path):
    path = testing.write_model(tmp_path / "llada.gguf", "llada")
    prompts = ["one", "two three", "four five six", "seven"]
    opts = dict(max_new_tokens=16, block_length=8, steps=16, stop=[])
    with Generator(path, n_ctx=128, **EXACT) as gen:
        solo = [gen.generate(p, **opts).tokens for p in prompts]
    with Engine(path, n_parallel=4, n_ctx=128, **EXACT) as engine:
        assert [r.tokens for r in _from_threads(engine, prompts, **opts)] == solo
        # guidance uses another batch key (it runs after); another cache mode shares the step
        a = engine.submit("one", cfg_scale=1.0, **opts)
        b = engine.submit("one", cache="dual", **opts)
        assert a.result(60).stop_reason == b.result(60).stop_reason == "length"


def test_streaming_cancel_and_keys():
    with Engine(default_model("block"), n_parallel=4, n_ctx=512, **EXACT) as engine:
        req = engine.submit("sort 93715=", max_new_tokens=16)
        chunks = list(req)
        assert "".join(c.text for c in chunks) == "13579" and chunks[-1].stop_reason == "stop"
        # another block length cannot share a step: both finish, one after the other
        r4 = engine.submit("47+38=", max_new_tokens=16, block_length=4)
        r8 = engine.submit("47+38=", max_new_tokens=16, block_length=8)
        assert r4.result(60).text == "85" and r8.result(60).stop_reason in ("stop", "length")
        # cancel: a long request leaves before its next step
        long = engine.submit("rev python=", max_new_tokens=400, stop=["never"])
        it = iter(long)
        next(it)
        long.cancel()
        res = long.result(30)
        assert res.stop_reason == "cancelled" and 0 < len(res.tokens) < 400
        assert engine.running == 0


def test_bad_requests_raise_in_the_caller():
    with Engine(default_model("block"), n_parallel=2, n_ctx=64, max_queue=1, **EXACT) as engine:
        with pytest.raises(ValueError, match="temperature"):
            engine.submit("x", temperature=-1)
        with pytest.raises(ValueError, match="n_ctx"):
            engine.submit("x " * 100, max_new_tokens=16)
        with pytest.raises(ValueError, match="callback"):
            engine.submit("x", callback=print)
        # a full queue: two requests run, one may wait, the next is refused
        blockers = []
        for _ in range(2):
            blockers.append(engine.submit("rev python=", max_new_tokens=48, stop=["never"]))
            deadline = time.time() + 30
            while engine.queued and time.time() < deadline:
                time.sleep(0.005)
        blockers.append(engine.submit("rev python=", max_new_tokens=48, stop=["never"]))
        if engine.running == 2:               # (the first two may already have finished)
            with pytest.raises(QueueFullError):
                engine.submit("rev python=", max_new_tokens=48, stop=["never"])
            assert engine.stats["rejected"] == 1
        for r in blockers:
            assert r.result(120).stop_reason == "length"
    with pytest.raises(EngineClosedError):
        engine.submit("x")


def test_close_with_cancel_ends_everything():
    engine = Engine(default_model("block"), n_parallel=2, n_ctx=512, **EXACT)
    reqs = [engine.submit("rev python=", max_new_tokens=400, stop=["never"]) for _ in range(5)]
    time.sleep(0.2)
    engine.close(cancel=True, timeout=30)
    reasons = {r.result(10).stop_reason for r in reqs}
    assert reasons <= {"cancelled", "length"} and "cancelled" in reasons


def test_a_failing_engine_thread_fails_its_requests_and_refuses_new_ones():
    engine = Engine(default_model("block"), n_parallel=2, n_ctx=256, **EXACT)
    try:
        with pytest.raises(ValueError, match="out of range"):
            engine.submit("x", stop=[10 ** 9], max_new_tokens=8)   # checked in the caller's thread
        assert engine.submit("47+38=", max_new_tokens=8).result(30).text == "85"

        def boom():
            raise RuntimeError("boom")
        engine._take_admissible = boom                     # an internal failure in the thread
        req = engine.submit("47+38=", max_new_tokens=8)
        res = req.result(30)
        assert res.stop_reason == "error" and "boom" in res.error
        assert list(req)[-1].stop_reason == "error"
        assert not engine.alive
        with pytest.raises(EngineClosedError, match="boom"):
            engine.submit("47+38=")
    finally:
        engine.close(timeout=30)


def test_limits_refuse_what_a_request_asks_and_hold_what_the_model_chooses():
    from llamadiff.serving import AboveLimitError
    with Engine(default_model("block"), n_parallel=2, n_ctx=512, **EXACT) as engine:
        with pytest.raises(AboveLimitError, match="max_new_tokens=64 is above the limit of 32") as err:
            engine.submit("rev python=", max_new_tokens=64, limits={"max_new_tokens": 32})
        assert (err.value.option, err.value.value, err.value.limit) == ("max_new_tokens", 64, 32)
        # no length given: the model's default (256) is held to the limit
        held = engine.submit("rev python=", stop=[], limits={"max_new_tokens": 32}).result(120)
        free = engine.submit("rev python=", stop=[]).result(120)
    assert len(held.tokens) == 32 and held.stop_reason == "length"
    assert len(free.tokens) == 256


def test_close_with_cancel_answers_requests_that_never_started():
    """close(cancel=True) between batches or before the first one: the waiting requests end
    "cancelled" too (they used to be dropped unanswered when nothing was running)."""
    for i in range(30):
        batcher = Engine(default_model("block"), n_parallel=1, n_ctx=256, **EXACT)
        reqs = [batcher.submit("rev python=", max_new_tokens=8, stop=[]) for _ in range(4)]
        time.sleep(0.002 * (i % 10))
        batcher.close(cancel=True, timeout=30)
        assert all(r.result(10).stop_reason in ("cancelled", "length") for r in reqs)


def test_causal_modes_and_token_editing_through_the_batcher():
    """Requests of the causal modes share verify passes and get the tokens a Generator gives;
    a token-editing request batches with plain block-diffusion ones."""
    opts = [dict(mode="speculative"), dict(mode="autoregressive"), dict(mode="speculative", block_length=2),
            dict(strategy="token_editing", editing_threshold=0.5), dict()]
    with Generator(default_model("block"), n_ctx=256, **EXACT) as gen:
        solo = [gen.generate(p, max_new_tokens=12, stop=[], **o).tokens for p, o in zip(PROMPTS, opts)]
    with Engine(default_model("block"), n_parallel=6, n_ctx=256, **EXACT) as engine:
        requests = [engine.submit(p, max_new_tokens=12, stop=[], **o) for p, o in zip(PROMPTS, opts)]
        results = [r.result(timeout=120) for r in requests]
    assert [r.tokens for r in results] == solo
    assert results[0].stats["verify_passes"] >= 1 and "edits" in results[3].stats


def test_canvas_requests_batch_too(tmp_path):
    """DiffusionGemma (canvas diffusion): requests from threads share the decoder steps and get
    the tokens each gets alone; an option of another family fails in the caller."""
    path = testing.write_diffusion_gemma(tmp_path / "dg.gguf", seed=1)
    prompts = ["one", "two three", "four five six", "seven"]
    opts = dict(max_new_tokens=32, steps=6, seed=2)
    with Generator(path, n_ctx=256, **EXACT) as gen:
        solo = [gen.generate(p, **opts).tokens for p in prompts]
    with Engine(path, n_parallel=4, n_ctx=256, **EXACT) as engine:
        assert [r.tokens for r in _from_threads(engine, prompts, **opts)] == solo
        with pytest.raises(ValueError, match="t_max down to t_min"):
            engine.submit("one", temperature=0.7, **opts)

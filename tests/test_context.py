"""Context: decoding, zero-copy logits, KV memory, settings and their validation."""

import threading

import numpy as np
import pytest

from llamadiff import Context, DecodeError


def test_logits_share_llama_cpp_memory(qwen3_model):
    with Context(qwen3_model, n_ctx=64) as ctx:
        assert ctx.decode([5, 6, 7]) == 3
        a = ctx.logits
        b = ctx.logits
        assert a.shape == (3, qwen3_model.n_vocab) and a.dtype == np.float32
        assert a.ctypes.data == b.ctypes.data            # the same buffer, not copies
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[0, 0] = 1.0
        assert np.isfinite(a).all()


def test_logits_flags_select_rows(qwen3_model):
    with Context(qwen3_model, n_ctx=64) as ctx:
        ctx.decode([5, 6, 7, 8])
        full = ctx.logits.copy()
        ctx.memory_clear()
        ctx.decode([5, 6, 7, 8], logits=[False, True, False, True])
        assert ctx.n_outputs == 2
        np.testing.assert_allclose(ctx.logits, full[[1, 3]], rtol=1e-5, atol=1e-5)
        ctx.memory_clear()
        ctx.decode([5, 6, 7, 8], logits="last")
        np.testing.assert_allclose(ctx.logits, full[[3]], rtol=1e-5, atol=1e-5)
        ctx.memory_clear()
        ctx.decode([5, 6, 7, 8], logits=False)
        assert ctx.logits.shape == (0, qwen3_model.n_vocab)


def test_positions_continue_after_memory(qwen3_model):
    with Context(qwen3_model, n_ctx=64) as ctx:
        ctx.decode([1, 2, 3], logits=False)
        assert ctx.memory_pos_max() == 2 and ctx.memory_pos_min() == 0
        ctx.decode([4])                      # default position: 3
        assert ctx.memory_pos_max() == 3
        assert ctx.memory_remove(2)          # drop positions 2 and 3
        assert ctx.memory_pos_max() == 1
        ctx.memory_clear()
        assert ctx.memory_pos_max() == -1


def test_incremental_equals_one_shot(qwen3_model):
    tokens = [9, 8, 7, 6, 5, 4]
    with Context(qwen3_model, n_ctx=64, type_k="f32", type_v="f32", flash_attn=False) as ctx:
        ctx.decode(tokens)
        one_shot = ctx.logits.copy()
        ctx.memory_clear()
        rows = []
        for t in tokens:
            ctx.decode([t])
            rows.append(ctx.logits[0].copy())
        np.testing.assert_allclose(np.array(rows), one_shot, rtol=1e-4, atol=1e-4)


def test_causal_switch(qwen3_model):
    with Context(qwen3_model, n_ctx=64) as ctx:
        assert ctx.causal
        ctx.decode([1, 2, 3])
        causal = ctx.logits.copy()
        ctx.memory_clear()
        ctx.causal = False
        assert not ctx.causal
        ctx.decode([1, 2, 3])
        bidir = ctx.logits.copy()
        # the first token sees later ones only without the causal mask
        assert not np.allclose(bidir[0], causal[0], atol=1e-3)
        ctx.memory_clear()
        ctx.causal = True
        ctx.decode([1, 2, 3])
        np.testing.assert_allclose(ctx.logits, causal, rtol=1e-5, atol=1e-5)


def test_diffusion_arch_context_has_no_memory(llada_model):
    with Context(llada_model, n_ctx=64) as ctx:
        assert not ctx.has_memory and not ctx.causal
        ctx.memory_clear()                   # nothing to clear: no error
        assert ctx.memory_pos_max() == -1
        ctx.decode(list(range(10)))
        assert ctx.logits.shape == (10, llada_model.n_vocab)
        with pytest.raises(ValueError, match="non-causal"):
            ctx.causal = True


@pytest.mark.parametrize("bad", [0, -5])
def test_n_ctx_must_be_positive(qwen3_model, bad):
    with pytest.raises(ValueError, match="n_ctx must be > 0"):
        Context(qwen3_model, n_ctx=bad)


def test_bad_context_settings(qwen3_model):
    with pytest.raises(TypeError):
        Context(qwen3_model, n_ctx="big")
    with pytest.raises(ValueError, match="n_ubatch"):
        Context(qwen3_model, n_ctx=64, n_batch=16, n_ubatch=32)
    with pytest.raises(ValueError, match="n_seq_max"):
        Context(qwen3_model, n_ctx=64, n_seq_max=0)
    with pytest.raises(ValueError, match="type_k"):
        Context(qwen3_model, n_ctx=64, type_k="f8")
    with pytest.raises(ValueError, match="flash_attn"):
        Context(qwen3_model, n_ctx=64, flash_attn="sometimes")


def test_decode_more_than_ubatch_non_causal_is_an_error(qwen3_model, llada_model):
    with Context(qwen3_model, n_ctx=64, n_batch=32, n_ubatch=8, causal=False) as ctx:
        with pytest.raises(ValueError, match="n_ubatch"):
            ctx.decode(list(range(9)))
        ctx.decode(list(range(8)))           # the limit itself is fine
    with Context(llada_model, n_ctx=64, n_batch=32, n_ubatch=8) as ctx:
        with pytest.raises(ValueError, match="n_ubatch"):
            ctx.decode(list(range(12)))


def test_decode_input_validation(qwen3_model):
    with Context(qwen3_model, n_ctx=32, n_batch=16) as ctx:
        with pytest.raises(ValueError, match="n_batch"):
            ctx.decode(list(range(17)))
        with pytest.raises(ValueError, match="empty"):
            ctx.decode([])
        with pytest.raises(ValueError, match="out of range"):
            ctx.decode([1, qwen3_model.n_vocab])
        with pytest.raises(ValueError, match="out of range"):
            ctx.decode([-1])
        with pytest.raises(ValueError, match="outside the context"):
            ctx.decode([1], positions=[ctx.n_ctx])
        with pytest.raises(ValueError, match="positions"):
            ctx.decode([1, 2], positions=[0])
        with pytest.raises(ValueError, match="seq_id"):
            ctx.decode([1], seq_id=1)
        with pytest.raises(ValueError, match="logits"):
            ctx.decode([1], logits="first")
        # a gap in positions is refused by llama.cpp: a clear error, not a crash
        ctx.decode([1, 2], positions=[0, 1])
        with pytest.raises(DecodeError):
            ctx.decode([3], positions=[10])
        ctx.decode([3], positions=[2])       # still usable afterwards


def test_positions_beyond_the_context_are_refused(qwen3_model):
    with Context(qwen3_model, n_ctx=256, n_batch=64) as ctx:
        for start in range(0, ctx.n_ctx, 64):
            ctx.decode(list(range(1, 65)), positions=range(start, start + 64), logits=False)
        assert ctx.memory_pos_max() == ctx.n_ctx - 1
        with pytest.raises(ValueError, match="outside the context"):
            ctx.decode([1])                  # would be position n_ctx


def test_closed_context_refuses_use(qwen3_model):
    ctx = Context(qwen3_model, n_ctx=32)
    ctx.decode([1, 2])
    view = ctx.logits
    ctx.close()                              # deferred while `view` is alive
    assert ctx.closed
    assert np.isfinite(view).all()           # the memory is still valid
    with pytest.raises(ValueError, match="closed"):
        ctx.decode([1])
    with pytest.raises(ValueError, match="closed"):
        ctx.logits
    del view
    ctx.close()


def test_decode_releases_the_gil(qwen3_model):
    """Two contexts on one model decode from two threads without interfering."""
    results = {}

    def work(key, tokens):
        with Context(qwen3_model, n_ctx=128, type_k="f32", type_v="f32", flash_attn=False,
                     n_threads=1) as ctx:
            for _ in range(5):
                ctx.memory_clear()
                ctx.decode(tokens)
            results[key] = ctx.logits.copy()

    a, b = list(range(40)), list(range(40, 80))
    threads = [threading.Thread(target=work, args=(k, t)) for k, t in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with Context(qwen3_model, n_ctx=128, type_k="f32", type_v="f32", flash_attn=False) as ctx:
        ctx.decode(a)
        np.testing.assert_allclose(results["a"], ctx.logits, rtol=1e-4, atol=1e-4)
        ctx.memory_clear()
        ctx.decode(b)
        np.testing.assert_allclose(results["b"], ctx.logits, rtol=1e-4, atol=1e-4)


def test_perf_counters(qwen3_model):
    with Context(qwen3_model, n_ctx=32) as ctx:
        ctx.decode([1, 2, 3])
        perf = ctx.perf()
        assert perf["n_prompt_eval"] + perf["n_eval"] >= 1

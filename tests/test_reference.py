"""llama.cpp's logits against an independent float64 NumPy forward pass.

Reference settings (F32 weights, F32 KV cache, flash attention off) must agree to
1e-5 relative; llama.cpp's defaults (F16 KV cache, flash attention auto) agree to
~2e-3 with the same argmax.
"""

import numpy as np
import pytest

from llamadiff import Context
from llamadiff.testing import read_model

from numpy_reference import block_causal_allowed, causal_allowed, forward, full_allowed

EXACT = dict(type_k="f32", type_v="f32", flash_attn=False)
TOKENS = [272, 104, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 44, 32, 49, 50, 51, 275, 275, 275]


def rel_err(got, ref):
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def qwen3_data(qwen3_path):
    return read_model(qwen3_path)


def test_qwen3_causal(qwen3_model, qwen3_data):
    ref = forward(qwen3_data, TOKENS, allowed=causal_allowed(len(TOKENS)))
    with Context(qwen3_model, n_ctx=64, **EXACT) as ctx:
        ctx.decode(TOKENS)
        assert rel_err(ctx.logits, ref) <= 1e-5


def test_qwen3_bidirectional(qwen3_model, qwen3_data):
    ref = forward(qwen3_data, TOKENS, allowed=full_allowed(len(TOKENS)))
    with Context(qwen3_model, n_ctx=64, causal=False, **EXACT) as ctx:
        ctx.decode(TOKENS)
        assert rel_err(ctx.logits, ref) <= 1e-5


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_full_diffusion_archs(arch, llada_model, dream_model, llada_path, dream_path):
    model, path = (llada_model, llada_path) if arch == "llada" else (dream_model, dream_path)
    ref = forward(read_model(path), TOKENS, allowed=full_allowed(len(TOKENS)))
    with Context(model, n_ctx=64, **EXACT) as ctx:
        ctx.decode(TOKENS)
        assert rel_err(ctx.logits, ref) <= 1e-5


def test_default_settings_are_close_with_same_argmax(qwen3_model, qwen3_data):
    ref = forward(qwen3_data, TOKENS, allowed=causal_allowed(len(TOKENS)))
    with Context(qwen3_model, n_ctx=64) as ctx:        # F16 KV cache, flash attention auto
        ctx.decode(TOKENS)
        assert rel_err(ctx.logits, ref) <= 5e-3
        assert (ctx.logits.argmax(axis=1) == ref.argmax(axis=1)).all()


@pytest.mark.parametrize("block", [1, 2, 4, 5])
def test_block_causal_through_the_kv_cache(qwen3_model, qwen3_data, block):
    """DESIGN §2: commit blocks one by one into the cache, then decode the active block.

    With non-causal attention each decoded block sees the cached prefix plus itself,
    which is exactly block-causal attention. Removing the active block's KV and decoding
    it again gives identical logits (what every denoising step relies on).
    """
    n = len(TOKENS)
    ref = forward(qwen3_data, TOKENS, allowed=block_causal_allowed(n, block, prefix=0))
    with Context(qwen3_model, n_ctx=64, causal=False, **EXACT) as ctx:
        got = np.empty_like(ref)
        for start in range(0, n, block):
            end = min(start + block, n)
            ctx.decode(TOKENS[start:end], positions=range(start, end))
            first = ctx.logits.copy()
            assert ctx.memory_remove(start)               # drop the active block's KV
            ctx.decode(TOKENS[start:end], positions=range(start, end))
            np.testing.assert_array_equal(ctx.logits, first)   # bit for bit
            got[start:end] = ctx.logits
            # keep it: the next block attends to this one (the "store" pass)
        assert rel_err(got, ref) <= 1e-5
        assert ctx.memory_pos_max() == n - 1

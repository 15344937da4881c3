"""Cross-implementation check: Hugging Face transformers (the PyTorch peer of the benchmark
harness) and llama.cpp agree on the same random weights -- logits and greedy block-diffusion
tokens. Runs when torch + transformers are installed (the `convert` / `bench` extras)."""

import os
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow     # the quick subset leaves it out (README: -m "not slow")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
import torch_sdar  # noqa: E402

from llamadiff import Context, Generator, testing  # noqa: E402

MASK = testing.byte_vocab().mask_id
PROMPT = [104, 101, 108, 108, 111, 32, 119]


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    # write_sdar_checkpoint(seed=0) holds the weights of write_qwen3(seed=0): the qwen3 fixture
    path = testing.write_sdar_checkpoint(tmp_path_factory.mktemp("hf") / "ckpt", seed=0)
    torch.manual_seed(0)
    return torch_sdar.load_qwen3(path)


def test_same_logits(hf_model, qwen3_model):
    tokens = list(range(30, 54))
    mask = torch_sdar.block_causal_mask(len(tokens), 4)
    with torch.inference_mode():
        ref = hf_model(input_ids=torch.tensor([tokens]), attention_mask=mask).logits[0].double().numpy()
    with Context(qwen3_model, n_ctx=64, causal=False, type_k="f32", type_v="f32", flash_attn=False) as ctx:
        ctx.set_block_causal(4)
        ctx.decode(tokens)
        err = np.max(np.abs(ctx.logits - ref)) / np.max(np.abs(ref))
    assert err <= 1e-3


@pytest.mark.parametrize("strategy", ["sequential", "low_confidence_static", "low_confidence_dynamic",
                                      "entropy_bounded"])
@pytest.mark.parametrize("block", [4, 8])
def test_same_greedy_tokens(hf_model, qwen3_model, strategy, block):
    extra = {"low_confidence_dynamic": {"threshold": 0.05}, "entropy_bounded": {"eb_gamma": 11.0}}.get(strategy, {})
    ref = torch_sdar.generate(hf_model, PROMPT, 16, block, block, MASK, strategy=strategy, **extra)
    with Generator(qwen3_model, n_ctx=256, type_k="f32", type_v="f32", flash_attn=False) as gen:
        ours = gen.generate(PROMPT, max_new_tokens=16, block_length=block, steps=block,
                            strategy=strategy, stop=[], **extra)
    assert ours.tokens == ref["tokens"]
    # SDAR's loop stores each block in its own pass; llamadiff fuses it into the next step
    assert ours.stats["decode_calls"] < ref["forwards"]

"""The training models (training/model.py) compute what llama.cpp computes once exported."""

import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow     # the quick subset leaves it out (README: -m "not slow")

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llamadiff import Context, Model, testing  # noqa: E402
from training.model import TinyLM  # noqa: E402


@pytest.mark.parametrize("arch,tied", [("qwen3", True), ("qwen3", False), ("llada", False)])
def test_exported_weights_give_llama_cpp_the_same_logits(tmp_path, arch, tied):
    shape = testing.ModelShape(n_embd=64, n_layer=2, n_head=4, n_head_kv=2 if arch == "qwen3" else 4,
                               head_dim=16, n_ff=96, tie_embeddings=tied)
    model = TinyLM(arch, shape, seed=3)
    with torch.no_grad():                      # make the norms non-trivial before exporting
        for name, p in model.w.items():
            if "norm" in name:
                p.mul_(1 + 0.2 * torch.randn(p.shape))
    path = testing.write_model(tmp_path / f"{arch}.gguf", arch, shape=shape, tensors=model.gguf_tensors())
    tokens = [int(t) for t in np.random.default_rng(0).integers(0, model.n_vocab - 10, 24)]
    n = len(tokens)
    allowed = torch.ones(n, n, dtype=torch.bool)
    if arch == "qwen3":
        allowed = torch.tril(allowed)
    with torch.no_grad():
        ref = model(torch.tensor([tokens]), allowed)[0].double().numpy()
    with Model(path) as m, Context(m, n_ctx=64, n_batch=32, n_ubatch=32, causal=arch == "qwen3",
                                   flash_attn=False, type_k="f32", type_v="f32", n_threads=2) as ctx:
        ctx.decode(tokens, list(range(n)))
        got = np.array(ctx.logits, dtype=np.float64)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-4 * np.abs(ref).max())


@pytest.mark.parametrize("kind", ["block", "full"])
def test_training_recipe_runs_and_exports(tmp_path, kind):
    from training.train import SEQ_LEN, train

    out = tmp_path / f"{kind}.gguf"
    info = train(kind, out, steps=3, seed=0, batch_size=4, lr=1e-3)
    assert info["steps"] == 3 and np.isfinite(info["loss"])
    with Model(str(out)) as m:
        assert m.family == kind
        assert int(m.meta("llamadiff.training.seq_len")) == SEQ_LEN
        if kind == "block":
            assert int(m.meta("diffusion.block_length")) == 4


def test_block_attention_of_the_training_objective():
    from training.train import block_masks

    m = block_masks(8, 4)
    clean, noisy = slice(0, 8), slice(8, 16)
    assert m[clean, clean][5].tolist() == [True] * 8 and m[clean, clean][2].tolist() == [True] * 4 + [False] * 4
    # a noisy block sees the clean blocks before it and itself, never its own clean copy
    assert m[noisy, clean][5].tolist() == [True] * 4 + [False] * 4
    assert m[noisy, noisy][5].tolist() == [False] * 4 + [True] * 4
    assert not m[clean, noisy].any()

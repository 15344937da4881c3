"""testing.write_model for the mixture-of-experts archs: qwen3moe, llada-moe, rnd1."""

import pytest

import llamadiff
from llamadiff import Generator, Model, testing
from llamadiff.testing import ModelShape

# arch -> (writer, family, mask id written to the metadata)
MOE = {
    "qwen3moe": (testing.write_qwen3moe, "block", False),
    "llada-moe": (testing.write_llada_moe, "full", True),
    "rnd1": (testing.write_rnd1, "full", True),
}


@pytest.fixture(scope="module", params=list(MOE))
def moe(request, tmp_path_factory):
    arch = request.param
    writer = MOE[arch][0]
    path = writer(tmp_path_factory.mktemp("moe") / f"{arch}.gguf", seed=7)
    return arch, path


def test_moe_model_loads(moe):
    arch, path = moe
    _, family, mask_in_meta = MOE[arch]
    with Model(path) as m:
        assert m.architecture == arch
        assert m.family == family
        assert m.is_diffusion == (arch in testing.DIFFUSION_ARCHS)
        assert m.n_layer == 2 and m.n_embd == 64
        vocab = testing.byte_vocab()
        assert m.n_vocab == vocab.n_tokens
        assert m.mask_token_id == vocab.mask_id
        assert ("tokenizer.ggml.mask_token_id" in m.metadata) == mask_in_meta
        assert m.metadata[f"{arch}.expert_count"] == "4"
        assert m.metadata[f"{arch}.expert_used_count"] == "2"
        assert m.metadata[f"{arch}.expert_feed_forward_length"] == "32"


def test_moe_generates_deterministically(moe):
    _, path = moe
    runs = []
    for _ in range(2):
        with Generator(path, n_ctx=128, n_threads=1) as g:
            result = g.generate("hello", max_new_tokens=8, stop=[])
        assert len(result.tokens) == 8
        runs.append(list(result.tokens))
    assert runs[0] == runs[1]


def test_moe_tensor_layout(moe):
    arch, path = moe
    data = testing.read_model(path)
    assert data.arch == arch
    w = data.weights
    # numpy layout, i.e. GGUF ne reversed: gate_inp ne {E, X}, gate/up {E, FX, X}, down {FX, E, X}
    assert w["blk.0.ffn_gate_inp.weight"].shape == (4, 64)
    assert w["blk.1.ffn_gate_exps.weight"].shape == (4, 32, 64)
    assert w["blk.1.ffn_up_exps.weight"].shape == (4, 32, 64)
    assert w["blk.1.ffn_down_exps.weight"].shape == (4, 64, 32)
    assert "blk.0.ffn_gate.weight" not in w and "blk.0.attn_q_norm.weight" in w
    hp = data.hparams
    assert (hp["n_expert"], hp["n_expert_used"], hp["n_ff_exp"]) == (4, 2, 32)
    assert hp["causal"] == (arch == "qwen3moe")
    assert hp["rope_type"] == "neox"
    assert hp["shift_logits"] == (False if arch == "llada-moe" else None)


def test_moe_f16_keeps_router_f32(tmp_path):
    import gguf
    path = testing.write_rnd1(tmp_path / "rnd1.gguf", dtype="f16",
                              shape=ModelShape(tie_embeddings=True, n_expert=8, n_expert_used=3, n_ff_exp=16))
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.ffn_gate_inp.weight"] == gguf.GGMLQuantizationType.F32
    assert types["blk.0.ffn_up_exps.weight"] == gguf.GGMLQuantizationType.F16
    with Generator(path, n_ctx=128, n_threads=1) as g:
        assert len(g.generate("hello", max_new_tokens=8, stop=[]).tokens) == 8


def test_moe_writer_rejects_what_llama_cpp_cannot_load(tmp_path):
    with pytest.raises(ValueError, match="output.weight"):
        testing.write_llada_moe(tmp_path / "a.gguf", shape=ModelShape(tie_embeddings=True))
    with pytest.raises(ValueError, match="n_head \\* head_dim"):
        testing.write_llada_moe(tmp_path / "b.gguf", shape=ModelShape(head_dim=32))
    with pytest.raises(ValueError, match="n_expert_used"):
        testing.write_qwen3moe(tmp_path / "c.gguf", shape=ModelShape(n_expert_used=5))


def test_moe_writers_are_deterministic(tmp_path):
    for arch in MOE:
        a = testing.write_model(tmp_path / f"a-{arch}.gguf", arch, seed=3).read_bytes()
        b = testing.write_model(tmp_path / f"b-{arch}.gguf", arch, seed=3).read_bytes()
        assert a == b


def test_moe_writers_exported():
    for name in ("write_qwen3moe", "write_llada_moe", "write_rnd1"):
        assert name in testing.__all__
    assert set(MOE) <= set(testing.ARCHS)
    assert {"llada-moe", "rnd1"} <= set(testing.DIFFUSION_ARCHS)
    assert "qwen3moe" not in testing.DIFFUSION_ARCHS
    assert llamadiff.testing is testing

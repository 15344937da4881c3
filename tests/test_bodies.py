"""Every architecture of llamadiff.testing against the NumPy float64 reference, and block
diffusion on every causal body (qwen3, qwen3moe, qwen2, llama, bailingmoe2): the reference
loop, the exact cache against recomputation, and the bodies that are refused."""

import json

import gguf
import numpy as np
import pytest

from llamadiff import Context, Generator, Model, UnsupportedModelError, testing
from llamadiff.cli import main as cli_main

from numpy_reference import block_causal_allowed, block_diffusion_generate, forward

EXACT = dict(type_k="f32", type_v="f32", flash_attn=False)
MASK = testing.byte_vocab().mask_id
PROMPT = [104, 101, 108, 108, 111, 32, 119]       # 7 tokens: the last block starts mid-prompt


@pytest.fixture(scope="module")
def bodies(tmp_path_factory):
    d = tmp_path_factory.mktemp("bodies")
    return {arch: testing.write_model(d / f"{arch}.gguf", arch, seed=5) for arch in testing.ARCHS}


@pytest.mark.parametrize("arch", testing.ARCHS)
def test_logits_match_numpy_reference(bodies, arch):
    """llama.cpp's graph for each arch (MoE routing, fused QKV, partial RoPE, biases included)
    equals the float64 reference, with the attention llama.cpp runs the arch with."""
    tokens = list(range(30, 50))
    causal = arch in testing.CAUSAL_ARCHS
    with Context(Model(bodies[arch]), n_ctx=64, causal=causal, **EXACT) as ctx:
        ctx.decode(tokens)
        got = np.array(ctx.logits)
    ref = forward(testing.read_model(bodies[arch]), tokens)
    assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) <= 1e-5


@pytest.mark.parametrize("arch", testing.CAUSAL_ARCHS)
def test_block_causal_logits_match_numpy_reference(bodies, arch):
    tokens = list(range(40, 56))
    with Context(Model(bodies[arch]), n_ctx=64, causal=False, **EXACT) as ctx:
        ctx.set_block_causal(4)
        ctx.decode(tokens)
        got = np.array(ctx.logits)
    ref = forward(testing.read_model(bodies[arch]), tokens, allowed=block_causal_allowed(16, 4))
    assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) <= 1e-5


@pytest.mark.parametrize("arch", testing.CAUSAL_ARCHS)
@pytest.mark.parametrize("strategy,extra", [("low_confidence_static", {}),
                                            ("low_confidence_dynamic", {"threshold": 0.05})])
def test_block_diffusion_on_every_causal_body(bodies, arch, strategy, extra):
    """Greedy block diffusion equals the NumPy reference loop (no cache), and the exact cache
    gives the same tokens as recomputing the prefix every step."""
    model = Model(bodies[arch])
    assert model.family == "block" and model.block_diffusion_problem is None
    ref = block_diffusion_generate(testing.read_model(bodies[arch]), PROMPT, 10, 4, 2, strategy,
                                   MASK, **extra)
    with Generator(model, n_ctx=128, n_threads=2, **EXACT) as gen:
        opts = dict(max_new_tokens=10, block_length=4, steps=2, strategy=strategy, stop=[], **extra)
        cached = gen.generate(PROMPT, **opts)
        recomputed = gen.generate(PROMPT, cache=False, **opts)
    assert cached.tokens == ref
    assert recomputed.tokens == ref


@pytest.mark.parametrize("arch", testing.CAUSAL_ARCHS)
def test_batched_block_diffusion_equals_single(bodies, arch):
    prompts = [PROMPT, [50, 51, 52], list(range(60, 71))]
    with Generator(bodies[arch], n_ctx=128, n_threads=2, **EXACT) as gen:
        alone = [gen.generate(p, max_new_tokens=8, stop=[]).tokens for p in prompts]
        together = [r.tokens for r in gen.generate(prompts, max_new_tokens=8, stop=[], n_parallel=3)]
    assert together == alone


# --------------------------------------------------------------------------- refused bodies


def _write_body(path, arch, keys, shapes, seed=0):
    """A GGUF of any llama.cpp arch: metadata ``keys`` (uint32 / float32 / bool), random F32
    tensors of numpy ``shapes``, and the test vocab (which has a <|MASK|> token)."""
    vocab = testing.byte_vocab()
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in keys.items():
        if isinstance(value, bool):
            w.add_bool(f"{arch}.{key}", value)
        elif isinstance(value, float):
            w.add_float32(f"{arch}.{key}", value)
        else:
            w.add_uint32(f"{arch}.{key}", value)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    w.add_token_merges(vocab.merges)
    w.add_bos_token_id(vocab.eos_id)
    w.add_eos_token_id(vocab.eos_id)
    for name, shape in shapes.items():
        w.add_tensor(name, (0.1 * rng.standard_normal(shape)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _olmo2_with_sliding_window(path):
    E, F, V = 64, 128, testing.byte_vocab().n_tokens
    keys = {"context_length": 256, "embedding_length": E, "block_count": 1, "feed_forward_length": F,
            "attention.head_count": 4, "attention.head_count_kv": 4, "rope.freq_base": 10000.0,
            "attention.layer_norm_rms_epsilon": 1e-6, "attention.sliding_window": 16}
    shapes = {"token_embd.weight": (V, E), "output_norm.weight": (E,), "output.weight": (V, E)}
    for n in ("attn_q", "attn_k", "attn_v", "attn_output"):
        shapes[f"blk.0.{n}.weight"] = (E, E)
    for n in ("attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm"):
        shapes[f"blk.0.{n}.weight"] = (E,)
    shapes.update({"blk.0.ffn_gate.weight": (F, E), "blk.0.ffn_up.weight": (F, E),
                   "blk.0.ffn_down.weight": (E, F)})
    return _write_body(path, "olmo2", keys, shapes)


def _mamba(path):
    E, DI, DS, DC, R, V = 64, 128, 16, 4, 4, testing.byte_vocab().n_tokens
    keys = {"context_length": 256, "embedding_length": E, "block_count": 1, "feed_forward_length": 0,
            "attention.head_count": 0, "attention.layer_norm_rms_epsilon": 1e-6,
            "ssm.conv_kernel": DC, "ssm.inner_size": DI, "ssm.state_size": DS, "ssm.time_step_rank": R}
    shapes = {"token_embd.weight": (V, E), "output_norm.weight": (E,), "output.weight": (V, E),
              "blk.0.attn_norm.weight": (E,), "blk.0.ssm_in.weight": (2 * DI, E),
              "blk.0.ssm_conv1d.weight": (DI, DC), "blk.0.ssm_conv1d.bias": (DI,),
              "blk.0.ssm_x.weight": (R + 2 * DS, DI), "blk.0.ssm_dt.weight": (DI, R),
              "blk.0.ssm_dt.bias": (DI,), "blk.0.ssm_a": (DI, DS), "blk.0.ssm_d": (DI,),
              "blk.0.ssm_out.weight": (E, DI)}
    return _write_body(path, "mamba", keys, shapes)


@pytest.mark.parametrize("make,why", [(_olmo2_with_sliding_window, "sliding-window attention"),
                                      (_mamba, "recurrent")])
def test_bodies_that_cannot_run_block_diffusion_are_refused(tmp_path, make, why, capsys):
    path = make(tmp_path / "body.gguf")
    with Model(path) as model:
        assert model.mask_token_id == MASK            # a mask token alone does not qualify it
        assert why in model.block_diffusion_problem
        assert model.family is None
    with pytest.raises(UnsupportedModelError, match=f"block diffusion cannot run on this model.*{why}"):
        Generator(path)
    assert cli_main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] is None and why in info["block_diffusion_problem"]


def test_encoders_are_refused(tmp_path):
    """A causal-looking file whose attention is bidirectional by metadata (an encoder)."""
    path = testing.write_qwen3(tmp_path / "enc.gguf", metadata={"qwen3.attention.causal": False})
    with Model(path) as model:
        assert "encoder" in model.block_diffusion_problem and model.family is None


def test_bodies_with_their_own_cache_are_listed_from_the_pinned_source():
    """NO_MEMORY_ARCHS / OWN_CACHE_ARCHS (llamadiff/bodies.py) are exactly the special cases of
    llama_model::create_memory in the pinned llama.cpp, so an update that adds one fails here."""
    import re
    from pathlib import Path

    from llamadiff.bodies import NO_MEMORY_ARCHS, OWN_CACHE_ARCHS

    src = Path(__file__).resolve().parents[1] / "vendor" / "llama.cpp" / "src"
    names = dict(re.findall(r"\{ (LLM_ARCH_\w+),\s+\"([^\"]+)\"", (src / "llama-arch.cpp").read_text()))
    model_cpp = (src / "llama-model.cpp").read_text()
    body = model_cpp[model_cpp.index("llama_model::create_memory("):]
    body = body[:body.index("        default:")]
    special = {names[a] for a in re.findall(r"case (LLM_ARCH_\w+):", body)}
    assert special == NO_MEMORY_ARCHS | OWN_CACHE_ARCHS
    assert not NO_MEMORY_ARCHS & OWN_CACHE_ARCHS


def test_full_diffusion_archs_name_their_family(bodies):
    for arch in testing.DIFFUSION_ARCHS:
        with Model(bodies[arch]) as model:
            assert model.family == "full"
            assert "full diffusion" in model.block_diffusion_problem


# --------------------------------------------------------------------------- shifted rows


@pytest.mark.parametrize("n_prompt", [7, 8])
@pytest.mark.parametrize("strategy,extra", [("low_confidence_static", {}), ("sequential", {}),
                                            ("low_confidence_dynamic", {"threshold": 0.05})])
def test_block_diffusion_with_shifted_rows(tmp_path, n_prompt, strategy, extra):
    """shift_logits (Fast-dLLM v2): the row of p - 1 predicts p, the block's first position
    included; from the GGUF's diffusion.shift_logits, cached and recomputed alike."""
    prompt = list(range(60, 60 + n_prompt))
    path = testing.write_qwen2(tmp_path / "fast-dllm.gguf", seed=4,
                               metadata={"diffusion.shift_logits": True})
    data = testing.read_model(path)
    ref = block_diffusion_generate(data, prompt, 12, 4, 2, strategy, MASK, shift=True, **extra)
    plain = block_diffusion_generate(data, prompt, 12, 4, 2, strategy, MASK, **extra)
    assert ref != plain
    with Generator(path, n_ctx=128, n_threads=2, **EXACT) as gen:
        opts = dict(max_new_tokens=12, block_length=4, steps=2, strategy=strategy, stop=[], **extra)
        assert gen.generate(prompt, **opts).tokens == ref
        assert gen.generate(prompt, cache=False, **opts).tokens == ref
        assert gen.generate(prompt, shift_logits=False, **opts).tokens == plain
        batch = gen.generate([prompt, prompt[:3], [MASK, 60, 61]], n_parallel=3, **opts)
        assert batch[0].tokens == ref
        # a prompt shorter than a block; one whose first token is the mask (position 0 has no
        # row before it and stays as given): neither disturbs the others' rows
        for other, result in zip((prompt[:3], [MASK, 60, 61]), batch[1:]):
            assert result.tokens == block_diffusion_generate(data, other, 12, 4, 2, strategy, MASK,
                                                             shift=True, **extra)
    # a prefix longer than one decode (n_batch 8): recomputed in block-aligned chunks
    with Generator(path, n_ctx=128, n_batch=8, n_threads=2, **EXACT) as gen:
        long_prompt = list(range(60, 60 + n_prompt + 9))
        long_ref = block_diffusion_generate(data, long_prompt, 8, 4, 2, strategy, MASK, shift=True, **extra)
        assert gen.generate(long_prompt, max_new_tokens=8, block_length=4, steps=2, strategy=strategy,
                            stop=[], cache=False, **extra).tokens == long_ref
        assert gen.generate(long_prompt, max_new_tokens=8, block_length=4, steps=2, strategy=strategy,
                            stop=[], **extra).tokens == long_ref

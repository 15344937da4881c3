"""`llamadiff convert`: block-diffusion Hugging Face checkpoints (SDAR, TraDo, SDAR-MoE,
Fast-dLLM v2, LLaDA2.0, each in its published format) -> GGUF, checked against NumPy and
against the body's own test model."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from safetensors.numpy import load_file  # noqa: E402

from llamadiff import Context, Generator, Model, UnsupportedModelError, testing  # noqa: E402
from llamadiff.cli import main as cli_main  # noqa: E402
from llamadiff.convert import FAMILIES, ConversionError, convert  # noqa: E402
from llamadiff.testing import hf_tensor_name, read_model  # noqa: E402

from numpy_reference import block_causal_allowed, forward  # noqa: E402

pytestmark = pytest.mark.slow     # the quick subset leaves it out (README: -m "not slow")


@pytest.fixture(scope="module")
def sdar_dir(tmp_path_factory):
    return testing.write_hf_checkpoint(tmp_path_factory.mktemp("sdar") / "SDAR-tiny", "sdar", seed=3,
                                       block_length=8)


@pytest.fixture(scope="module")
def converted(sdar_dir, tmp_path_factory):
    return convert(sdar_dir, tmp_path_factory.mktemp("gguf") / "sdar-tiny-f32.gguf", outtype="f32")


def test_metadata(converted):
    m = Model(converted)
    vocab = testing.byte_vocab()
    assert m.architecture == "qwen3" and m.family == "block"
    assert m.mask_token_id == vocab.mask_id
    assert m.meta("diffusion.block_length") == "8"
    assert m.n_vocab == vocab.n_tokens and m.n_layer == 2
    assert m.tokenize("hello world", add_special=False) == [266, 271]
    assert m.chat_template and "<|im_start|>" in m.chat_template
    # Generator takes the trained block length as its default
    with Generator(m, n_ctx=256) as gen:
        assert gen.default_block_length == 8
        out = gen.generate("hi", max_new_tokens=8, stop=[])
        assert out.stats["block_length"] == 8


def test_logits_match_numpy_reference_on_hf_weights(sdar_dir, converted):
    """Reference logits from the checkpoint's own safetensors weights (not the GGUF)."""
    hf = load_file(str(sdar_dir / "model.safetensors"))
    data = read_model(converted)
    assert set(hf_tensor_name(k) for k in data.weights) == set(hf)
    weights = {k: hf[hf_tensor_name(k)].astype(np.float64) for k in data.weights}
    config = json.loads((sdar_dir / "config.json").read_text())
    hp = data.hparams
    assert (hp["n_layer"], hp["n_head"], hp["n_head_kv"], hp["head_dim"]) == (
        config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"],
        config["head_dim"])
    ref_model = data._replace(weights=weights)
    tokens = [272, 104, 101, 108, 108, 111, 275, 275, 275, 275, 275, 275]
    ref = forward(ref_model, tokens, allowed=block_causal_allowed(len(tokens), 8))
    with Context(Model(converted), n_ctx=64, causal=False, type_k="f32", type_v="f32",
                 flash_attn=False) as ctx:
        ctx.set_block_causal(8)
        ctx.decode(tokens)
        err = np.max(np.abs(ctx.logits - ref)) / np.max(np.abs(ref))
    assert err <= 1e-5


def test_cli_and_q8_0(sdar_dir, tmp_path, capsys):
    out = tmp_path / "sdar-q8.gguf"
    assert cli_main(["convert", str(sdar_dir), "-o", str(out), "--outtype", "q8_0", "--block-length", "4"]) == 0
    m = Model(out)
    assert m.meta("diffusion.block_length") == "4" and "Q8_0" in m.file_type


def test_not_an_sdar_checkpoint(tmp_path, sdar_dir):
    other = tmp_path / "llama"
    other.mkdir()
    cfg = json.loads((sdar_dir / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not a block-diffusion checkpoint.*LLaDA2MoeModelLM \\(LLaDA2.0\\)"):
        convert(other, tmp_path / "x.gguf")
    with pytest.raises(FileNotFoundError):
        convert(tmp_path / "missing", tmp_path / "x.gguf")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConversionError, match="config.json"):
        convert(empty, tmp_path / "x.gguf")


# --------------------------------------------------------------------------- every family

# family -> (HF architecture, GGUF arch, block length recorded, shift_logits)
EXPECTED = {
    "sdar": ("SDARForCausalLM", "qwen3", 8, False),
    "trado": ("SDARForCausalLM", "qwen3", 8, False),
    "sdar-moe": ("SDARMoeForCausalLM", "qwen3moe", 8, False),
    "fast-dllm-v2": ("Fast_dLLM_QwenForCausalLM", "qwen2", 8, True),
    "llada2": ("LLaDA2MoeModelLM", "bailingmoe2", 32, False),     # its configs hold none: 32
    "llada2.1": ("LLaDA2MoeModelLM", "bailingmoe2", 32, False),
    "nemotron-diffusion": ("NemotronDiffusionForCausalLM", "mistral3", 8, False),
    "stable-diffcoder": ("StableDiffCoderForCausalLM", "llama", 8, False),
}


@pytest.fixture(scope="module", params=list(EXPECTED))
def family(request, tmp_path_factory):
    name = request.param
    d = tmp_path_factory.mktemp(name)
    hf = testing.write_hf_checkpoint(d / "hf", name, seed=4, block_length=8)
    out = convert(hf, d / f"{name}.gguf", outtype="f32")
    source = testing.write_model(d / "source.gguf", EXPECTED[name][1], seed=4)
    return name, hf, out, source


def test_every_family_converts_to_its_body(family):
    """The GGUF holds the checkpoint's weights under the body's tensor names, the same
    hyper-parameters as the body's test model, and the block-diffusion metadata."""
    name, hf, out, source = family
    hf_arch, arch, block, shift = EXPECTED[name]
    assert json.loads((hf / "config.json").read_text())["architectures"] == [hf_arch]
    assert FAMILIES[hf_arch].gguf_arch == arch
    got, want = read_model(out), read_model(source)
    assert got.arch == arch
    assert set(got.weights) == set(want.weights)
    for key, value in want.weights.items():
        np.testing.assert_array_equal(got.weights[key], value, err_msg=key)
    skip = {"metadata", "mask_id_in_metadata", "block_length", "shift_logits"}
    assert {k: v for k, v in got.hparams.items() if k not in skip} == \
        {k: v for k, v in want.hparams.items() if k not in skip}
    with Model(out) as m:
        assert m.family == "block" and m.block_diffusion_problem is None
        assert m.mask_token_id == testing.byte_vocab().mask_id
        assert "tokenizer.ggml.mask_token_id" in m.metadata
        assert m.meta("diffusion.block_length") == str(block)
        assert (m.meta("diffusion.shift_logits") == "true") == shift
        assert m.chat_template


def test_every_family_generates_as_its_body(family):
    """Generation with the converted file's defaults equals the body's test model run with
    those settings (block length, shifted rows) given explicitly."""
    name, _, out, source = family
    _, _, block, shift = EXPECTED[name]
    prompt = [104, 101, 108, 108, 111, 32, 119]
    with Generator(out, n_ctx=256, n_threads=2, type_k="f32", type_v="f32", flash_attn=False) as gen:
        assert gen.default_block_length == block
        ours = gen.generate(prompt, max_new_tokens=12, stop=[])
        chat = gen.generate([{"role": "user", "content": "hi"}], max_new_tokens=4, stop=[])
    with Generator(source, n_ctx=256, n_threads=2, type_k="f32", type_v="f32", flash_attn=False) as gen:
        ref = gen.generate(prompt, max_new_tokens=12, stop=[], block_length=block, shift_logits=shift)
    assert ours.tokens == ref.tokens
    assert ours.stats["block_length"] == block
    assert len(chat.tokens) == 4


def test_every_family_converts_fused(family, tmp_path):
    """``convert --fuse`` writes one q/k/v and one gate/up matrix per layer and generates what the
    unfused conversion generates (the metadata kept)."""
    name, hf, out, _ = family
    fused = tmp_path / f"{name}-fused.gguf"
    assert cli_main(["convert", str(hf), "-o", str(fused), "--outtype", "f32", "--fuse"]) == 0
    names = set(read_model(fused).weights)
    assert "blk.0.attn_qkv.weight" in names and not any(".attn_q." in n for n in names)
    assert any(".ffn_gate_up" in n for n in names)
    prompt = [104, 101, 108, 108, 111, 32, 119]
    runs = []
    for path in (out, fused):
        with Generator(path, n_ctx=256, n_threads=2, type_k="f32", type_v="f32", flash_attn=False) as gen:
            runs.append((gen.default_block_length, gen.model.mask_token_id,
                         gen.generate(prompt, max_new_tokens=12, stop=[]).tokens))
    assert runs[1] == runs[0]


def test_checkpoint_without_its_mask_token(tmp_path):
    hf = testing.write_hf_checkpoint(tmp_path / "hf", "fast-dllm-v2", seed=1)
    config = json.loads((hf / "tokenizer_config.json").read_text())
    del config["mask_token"]
    (hf / "tokenizer_config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (hf / name).write_text((hf / name).read_text().replace("|<MASK>|", "<|unused|>"))
    with pytest.raises(ConversionError, match="no mask token .*Fast-dLLM v2 checkpoint"):
        convert(hf, tmp_path / "x.gguf")


def test_broken_config(tmp_path):
    hf = testing.write_hf_checkpoint(tmp_path / "hf", "llada2", seed=1)
    (hf / "config.json").write_text("{not json")
    with pytest.raises(ConversionError, match="not valid JSON"):
        convert(hf, tmp_path / "x.gguf")
    (hf / "config.json").write_text(json.dumps({"architectures": "LLaDA2MoeModelLM"}))
    with pytest.raises(ValueError, match="not a block-diffusion checkpoint"):
        convert(hf, tmp_path / "x.gguf")


@pytest.mark.parametrize("edit,match", [
    (lambda d: (d / "tokenizer.json").write_text("{broken"), "tokenizer.json is not valid JSON"),
    (lambda d: (d / "tokenizer_config.json").write_text("[]"), "must hold a JSON object"),
    (lambda d: (d / "tokenizer.json").write_text(json.dumps({"added_tokens": [{"content": "x"}]})),
     "an added token needs a text and an id"),
    (lambda d: _config(d, block_size="8"), "block_size = '8' is not a block length"),
    (lambda d: _config(d, block_size=0), "block_size = 0 is not a block length"),
    (lambda d: _config(d, architectures=[["SDARForCausalLM"]]), "not a block-diffusion checkpoint"),
])
def test_malformed_checkpoint_files(tmp_path, edit, match):
    hf = testing.write_hf_checkpoint(tmp_path / "hf", "sdar", seed=1)
    edit(hf)
    with pytest.raises((ConversionError, ValueError), match=match):
        convert(hf, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def _config(hf, **changes):
    config = json.loads((hf / "config.json").read_text())
    config.update(changes)
    (hf / "config.json").write_text(json.dumps(config))


# --------------------------------------------------------------------------- LLaDA2.1


def test_llada21_is_told_from_llada20_and_records_its_rule(tmp_path):
    """LLaDA2.1 shares LLaDA2.0's architectures name: its generation settings (or its name, or
    --family) tell it apart, and the GGUF records token editing as the model's default."""
    hf = testing.write_hf_checkpoint(tmp_path / "checkpoint", "llada2.1", seed=2)
    out = convert(hf, tmp_path / "a.gguf", outtype="f32")
    with Model(out) as m:
        assert m.meta("diffusion.strategy") == "token_editing"
        assert float(m.meta("diffusion.threshold")) == pytest.approx(0.7)
        assert float(m.meta("diffusion.editing_threshold")) == pytest.approx(0.5)
        assert m.meta("diffusion.max_post_steps") == "16"
    # a checkpoint whose settings name another mode: the speed mode
    gen_cfg = json.loads((hf / "generation_config.json").read_text())
    gen_cfg.update(threshold=0.5, editing_threshold=0.0)
    (hf / "generation_config.json").write_text(json.dumps(gen_cfg))
    out = convert(hf, tmp_path / "b.gguf", outtype="f32")
    with Generator(out, n_ctx=256, n_threads=2) as gen:
        res = gen.generate([104, 101, 108], max_new_tokens=8, stop=[])
        assert "edits" not in res.stats                     # editing off: the threshold rule
        assert gen.resolve().strategy == "token_editing"
        assert gen.resolve().threshold == pytest.approx(0.5)
    # LLaDA2.0: no settings, no name: its own rule; the same files with the name or --family: 2.1
    (hf / "generation_config.json").unlink()
    with Model(convert(hf, tmp_path / "c.gguf", outtype="f32")) as m:
        assert m.meta("diffusion.strategy") is None
    named = tmp_path / "LLaDA2.1-mini"
    hf.rename(named)
    with Model(convert(named, tmp_path / "d.gguf", outtype="f32")) as m:
        assert m.meta("diffusion.strategy") == "token_editing"
    assert cli_main(["convert", str(named), "-o", str(tmp_path / "e.gguf"), "--outtype", "f32",
                     "--family", "LLaDA2.0"]) == 0
    with Model(tmp_path / "e.gguf") as m:
        assert m.meta("diffusion.strategy") is None
    with pytest.raises(ValueError, match="family 'SDAR' is not a format of LLaDA2MoeModelLM.*LLaDA2.1, LLaDA2.0"):
        convert(named, tmp_path / "f.gguf", family="SDAR")


@pytest.mark.parametrize("key,value", [("editing_threshold", 1.5), ("editing_threshold", "0.5"),
                                       ("threshold", 0), ("max_post_steps", -1), ("max_post_steps", 2.5),
                                       ("editing_threshold", True)])
def test_llada21_bad_decoding_values_name_the_key(tmp_path, key, value):
    hf = testing.write_hf_checkpoint(tmp_path / "hf", "llada2.1", seed=2)
    gen_cfg = json.loads((hf / "generation_config.json").read_text())
    gen_cfg[key] = value
    (hf / "generation_config.json").write_text(json.dumps(gen_cfg))
    with pytest.raises(ConversionError, match=f"generation_config.json: {key} = "):
        convert(hf, tmp_path / "x.gguf")


# --------------------------------------------------------------------------- a body's own class


@pytest.mark.parametrize("family,body_class", [("nemotron-diffusion", "Ministral3ForCausalLM"),
                                               ("stable-diffcoder", "LlamaForCausalLM")])
def test_a_checkpoint_under_its_bodys_class(tmp_path, family, body_class):
    """Published under the body's own class name, a checkpoint converts when it carries its
    family's marks (its config's mask token / block keys, or its name); a plain model of that
    class is refused, and --family names the format outright."""
    hf = testing.write_hf_checkpoint(tmp_path / "hf", family, seed=3, block_length=8)
    _config(hf, architectures=[body_class])
    with Model(convert(hf, tmp_path / "a.gguf", outtype="f32")) as m:
        assert m.meta("diffusion.block_length") == "8"
    config = json.loads((hf / "config.json").read_text())
    for key in ("mask_token_id", "block_length", "block_size"):
        config.pop(key, None)
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match=f"a {body_class} checkpoint without the marks.*pass family="):
        convert(hf, tmp_path / "b.gguf")
    name = FAMILIES[testing.HF_CHECKPOINTS[family]].name
    with Model(convert(hf, tmp_path / "c.gguf", outtype="f32", family=name)) as m:
        assert m.family == "block"
        assert m.meta("diffusion.block_length") == str(FAMILIES[testing.HF_CHECKPOINTS[family]].block_length)


def test_stable_diffcoder_records_its_model_cards_rule(tmp_path):
    hf = testing.write_hf_checkpoint(tmp_path / "hf", "stable-diffcoder", seed=3, block_length=4)
    with Generator(convert(hf, tmp_path / "s.gguf", outtype="f32"), n_ctx=128, n_threads=2) as gen:
        cfg = gen.resolve()
        assert (cfg.block_length, cfg.steps, cfg.strategy) == (4, 4, "low_confidence_static")


def test_variant_marks_are_read_with_care(tmp_path):
    """The name is searched in every part of the path (a Hugging Face cache snapshot is named by
    its commit), a name that only resembles another version is not taken for it, null values
    count as absent, and formats without generation settings never read generation_config.json."""
    from llamadiff.convert import _family_of
    assert _family_of(tmp_path / "models--inclusionAI--LLaDA2.1-mini" / "snapshots" / "0f3a9c",
                      "LLaDA2MoeModelLM", {}, {}, None).name == "LLaDA2.1"
    assert _family_of(tmp_path / "llada2-16b", "LLaDA2MoeModelLM", {}, {}, None).name == "LLaDA2.0"
    assert _family_of(tmp_path / "x", "LLaDA2MoeModelLM", {"editing_threshold": None}, {}, None).name == "LLaDA2.0"
    hf = testing.write_hf_checkpoint(tmp_path / "sdar", "sdar", seed=1)
    (hf / "generation_config.json").write_text("{not json")        # SDAR reads none: not an error
    with Model(convert(hf, tmp_path / "s.gguf", outtype="f32")) as m:
        assert m.family == "block"


def test_a_malformed_nemotron_config_names_its_key(tmp_path):
    hf = testing.write_hf_checkpoint(tmp_path / "hf", "nemotron-diffusion", seed=3, block_length=8)
    config = json.loads((hf / "config.json").read_text())
    config["rope_parameters"]["rope_type"] = "linear"
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="rope_type"):
        convert(hf, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


# -- DiffusionGemma (canvas diffusion) ---------------------------------------------------------

@pytest.fixture(scope="module")
def canvas_dir(tmp_path_factory):
    return testing.write_canvas_checkpoint(tmp_path_factory.mktemp("dg") / "hf", seed=1)


@pytest.mark.parametrize("encoder_names", [False, True])
def test_diffusion_gemma_converts_to_the_writers_tensors_and_keys(canvas_dir, tmp_path, encoder_names):
    """The converted file holds exactly the tensors, and the same model keys, as the tiny GGUF
    writer's file of the same weights (test_canvas.py checks that one against the reference),
    whichever name the tied weights are stored under; the sampler's settings become the model's
    defaults."""
    src = canvas_dir if not encoder_names else testing.write_canvas_checkpoint(tmp_path / "enc", seed=1,
                                                                                encoder_names=True)
    out = convert(src, tmp_path / "c.gguf", outtype="f32")
    weights = testing.canvas_weights(testing.CanvasShape(), 1, 0.04, testing.canvas_vocab())
    ref = read_model(testing.write_diffusion_gemma(tmp_path / "w.gguf", weights=weights))
    got = read_model(out)
    assert got.arch == ref.arch == "diffusion-gemma"
    assert sorted(got.weights) == sorted(ref.weights)
    for name, value in ref.weights.items():
        assert np.array_equal(got.weights[name], value), name
    def model_keys(data):
        return {k: v for k, v in data.hparams["metadata"].items()
                if k.startswith("diffusion-gemma.") or k == "diffusion.canvas_length"}
    assert model_keys(got) == model_keys(ref) and len(model_keys(ref)) > 20
    with Model(str(out)) as model:
        assert model.family == "canvas" and model.mask_token_id == 4 and model.eog_token_ids == [1]
        assert model.meta("diffusion.eb_max_steps") is not None


def test_diffusion_gemma_conversion_through_the_cli_generates(canvas_dir, tmp_path):
    out = tmp_path / "cli.gguf"
    assert cli_main(["convert", str(canvas_dir), "-o", str(out), "--outtype", "f16"]) == 0
    with Generator(str(out), n_ctx=256) as g:
        r = g.generate("the heat", max_new_tokens=16, steps=4, seed=1)
        assert r.tokens and r.stats["steps_per_block"]


def test_diffusion_gemma_checkpoints_with_bad_values_are_refused(tmp_path):
    bad = testing.write_canvas_checkpoint(tmp_path / "b", seed=1, generation={"t_min": "hot"})
    with pytest.raises(ConversionError, match="t_min"):
        convert(bad, tmp_path / "b.gguf")
    config = json.loads((bad / "config.json").read_text())
    config["canvas_length"] = 0
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="canvas_length"):
        convert(bad, tmp_path / "b.gguf")
    with pytest.raises(ValueError, match="block_length"):
        convert(bad, tmp_path / "b.gguf", block_length=4)
    assert not (tmp_path / "b.gguf").exists()

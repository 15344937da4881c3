"""`llamadiff convert`: SDAR Hugging Face checkpoints -> qwen3 GGUF, checked against NumPy."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from safetensors.numpy import load_file  # noqa: E402

from llamadiff import Context, Generator, Model, testing  # noqa: E402
from llamadiff.cli import main as cli_main  # noqa: E402
from llamadiff.convert import ConversionError, convert  # noqa: E402
from llamadiff.testing import hf_tensor_name, read_model  # noqa: E402

from numpy_reference import block_causal_allowed, forward  # noqa: E402


@pytest.fixture(scope="module")
def sdar_dir(tmp_path_factory):
    return testing.write_sdar_checkpoint(tmp_path_factory.mktemp("sdar") / "SDAR-tiny", seed=3,
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
    cfg["architectures"] = ["LlamaForCausalLM"]
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not an SDAR checkpoint"):
        convert(other, tmp_path / "x.gguf")
    with pytest.raises(FileNotFoundError):
        convert(tmp_path / "missing", tmp_path / "x.gguf")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConversionError, match="config.json"):
        convert(empty, tmp_path / "x.gguf")

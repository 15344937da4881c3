"""Model: loading, metadata, vocabulary, tokenization, lifetime."""

import gc

import pytest

from llamadiff import Model, Context, UnsupportedModelError, testing


def test_qwen3_is_block_family(qwen3_model):
    m = qwen3_model
    assert m.architecture == "qwen3"
    assert not m.is_diffusion
    assert m.family == "block"
    vocab = testing.byte_vocab()
    assert m.n_vocab == vocab.n_tokens
    # qwen3 block-diffusion GGUFs carry no mask id: it is found by its piece
    assert m.mask_token_id == vocab.mask_id
    assert m.token_to_piece(m.mask_token_id) == "<|MASK|>"
    assert set(m.eog_token_ids) == {vocab.eos_id, vocab.eot_id}
    assert m.n_ctx_train == 4096
    assert m.n_layer == 2 and m.n_embd == 64
    assert m.n_params > 0 and m.size > 0
    assert m.metadata["general.architecture"] == "qwen3"
    assert "<|im_start|>" in m.chat_template


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_diffusion_archs_are_full_family(arch, llada_model, dream_model):
    m = llada_model if arch == "llada" else dream_model
    assert m.architecture == arch
    assert m.is_diffusion
    assert m.family == "full"
    assert m.mask_token_id == testing.byte_vocab().mask_id


def test_tokenize_roundtrip(qwen3_model):
    m = qwen3_model
    text = "hello world, 123 ünïcode!"
    ids = m.tokenize(text, add_special=False)
    assert all(0 <= t < m.n_vocab for t in ids)
    assert m.detokenize(ids) == text
    assert m.tokenize("<|MASK|>", add_special=False, parse_special=True) == [m.mask_token_id]
    assert len(m.tokenize("<|MASK|>", add_special=False, parse_special=False)) > 1
    assert m.tokenize("", add_special=False) == []
    assert m.tokenize(b"abc", add_special=False) == m.tokenize("abc", add_special=False)


def test_detokenize_special_rendering(qwen3_model):
    m = qwen3_model
    ids = m.tokenize("a", add_special=False) + [m.eos_token_id]
    assert m.detokenize(ids, special=True).endswith("<|endoftext|>")
    assert m.detokenize(ids, special=False) == "a"


def test_token_ids_are_checked(qwen3_model):
    m = qwen3_model
    for bad in (-1, m.n_vocab, 10**9):
        with pytest.raises(ValueError, match="out of range"):
            m.token_to_piece(bad)
        with pytest.raises(ValueError, match="out of range"):
            m.detokenize([1, bad])


def test_chat_template(qwen3_model):
    text = qwen3_model.apply_chat_template([{"role": "user", "content": "2+2?"}])
    assert text == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError):
        qwen3_model.apply_chat_template([])
    with pytest.raises(ValueError):
        qwen3_model.apply_chat_template([{"content": "no role"}])


def test_chat_template_missing(llada_model):
    # the tiny llada model ships no template
    if llada_model.chat_template is None:
        with pytest.raises(UnsupportedModelError):
            llada_model.apply_chat_template([{"role": "user", "content": "x"}])
        assert llada_model.apply_chat_template(
            [{"role": "user", "content": "x"}], template="chatml").startswith("<|im_start|>user")


def test_close_is_idempotent_and_guards_use(qwen3_path):
    m = Model(qwen3_path)
    m.close()
    m.close()
    assert m.closed
    with pytest.raises(ValueError, match="closed"):
        m.tokenize("x")
    with pytest.raises(ValueError, match="closed"):
        Context(m, n_ctx=32)


def test_context_keeps_model_alive(qwen3_path):
    m = Model(qwen3_path)
    ctx = Context(m, n_ctx=64)
    m.close()          # deferred: the context still needs the weights
    del m
    gc.collect()
    ctx.decode([1, 2, 3])
    assert ctx.logits.shape == (3, ctx.n_vocab)
    ctx.close()


def test_context_manager(qwen3_path):
    with Model(qwen3_path) as m:
        with Context(m, n_ctx=32) as ctx:
            ctx.decode([1])
        assert ctx.closed
    assert m.closed


def test_vocab_only_model(qwen3_path):
    m = Model(qwen3_path, vocab_only=True)
    assert m.vocab_only and m.family == "block" and m.n_vocab == testing.byte_vocab().n_tokens
    assert m.tokenize("hello", add_special=False) == [266]
    assert m.n_head is None and m.n_head_kv is None      # no layers loaded: no abort
    assert m.architecture == "qwen3" and m.metadata
    with pytest.raises(ValueError, match="vocab_only"):
        Context(m, n_ctx=32)


def test_quantize(tmp_path, qwen3_path):
    import numpy as np
    from llamadiff import ModelLoadError, quantize

    out = quantize(qwen3_path, tmp_path / "q8.gguf", "q8_0")
    q8 = Model(out)
    assert "Q8_0" in q8.file_type and q8.size < Model(qwen3_path).size
    logits = []
    for m in (Model(qwen3_path), q8):
        with Context(m, n_ctx=64) as ctx:
            ctx.decode([5, 6, 7, 8])
            logits.append(ctx.logits.copy())
    assert np.max(np.abs(logits[0] - logits[1])) / np.max(np.abs(logits[0])) < 0.05
    with pytest.raises(ValueError, match="ftype"):
        quantize(qwen3_path, tmp_path / "x.gguf", "q9_9")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError):
        quantize(bad, tmp_path / "y.gguf")

"""Fused q/k/v and gate/up matrices (llamadiff.fuse, vendor/patches/0009): a fused file loads
and computes what the unfused one does, for every body that takes the fused tensors."""

import subprocess
import sys

import gguf
import numpy as np
import pytest

from llamadiff import Context, Generator, Model, quantize, testing
from llamadiff.fuse import FuseError, fuse_gguf

EXACT = dict(type_k="f32", type_v="f32", flash_attn=False, n_threads=1)
BODIES = ("qwen3", "qwen2", "llama", "qwen3moe", "bailingmoe2")
TOKENS = [5, 6, 7, 8, 9, 10, 11, 12]


def _names(path):
    return {t.name for t in gguf.GGUFReader(path).tensors}


def _logits(path, causal):
    with Model(path) as model, Context(model, n_ctx=64, causal=causal, **EXACT) as ctx:
        ctx.decode(TOKENS, logits=True)
        first = ctx.logits.copy()
        ctx.decode([13, 14], logits=True)            # and attending to the cache
        return np.concatenate([first, ctx.logits])


@pytest.mark.parametrize("arch", BODIES)
def test_fused_files_compute_what_unfused_files_do(tmp_path, arch):
    plain = testing.write_model(tmp_path / "plain.gguf", arch, seed=3)
    fused = tmp_path / "fused.gguf"
    done = fuse_gguf(plain, fused)
    names = _names(fused)
    assert done["architecture"] == arch and done["fused"] > 0 and done["kept"] == []
    assert not any(".attn_q." in n or ".attn_k." in n or ".attn_v." in n for n in names)
    assert not any(n.endswith((".ffn_gate.weight", ".ffn_up.weight", ".ffn_gate_exps.weight",
                               ".ffn_up_exps.weight")) for n in names)
    assert any(".ffn_gate_up" in n for n in names)
    for causal in (True, False):
        a, b = _logits(plain, causal), _logits(fused, causal)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))
    kw = dict(max_new_tokens=12, block_length=4, stop=[])
    with Generator(plain, n_ctx=128, **EXACT) as g1, Generator(fused, n_ctx=128, **EXACT) as g2:
        for options in (dict(), dict(strategy="low_confidence_dynamic", threshold=0.3)):
            assert g2.generate([5, 6, 7], **kw, **options).tokens == g1.generate([5, 6, 7], **kw, **options).tokens


@pytest.mark.parametrize("qtype", ["f16", "q8_0"])
def test_quantised_files_fuse_row_by_row(tmp_path, qtype):
    shape = testing.ModelShape(n_embd=256, n_layer=2, n_head=4, n_head_kv=2, head_dim=64, n_ff=512)
    plain = tmp_path / f"plain-{qtype}.gguf"
    quantize(testing.write_model(tmp_path / "f32.gguf", "qwen3", shape=shape, seed=1), plain, qtype)
    fused = tmp_path / f"fused-{qtype}.gguf"
    assert fuse_gguf(plain, fused)["kept"] == []
    reader = gguf.GGUFReader(fused)
    qkv = next(t for t in reader.tensors if t.name == "blk.0.attn_qkv.weight")
    assert qkv.tensor_type.name == qtype.upper()
    assert list(qkv.shape) == [256, 4 * 64 + 2 * 2 * 64]
    for causal in (True, False):
        a, b = _logits(plain, causal), _logits(fused, causal)
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))


def test_parts_of_different_types_stay_unfused(tmp_path):
    shape = testing.ModelShape(n_embd=256, n_layer=2, n_head=4, n_head_kv=2, head_dim=64, n_ff=512)
    plain = tmp_path / "q4km.gguf"
    quantize(testing.write_model(tmp_path / "f32.gguf", "qwen3", shape=shape, seed=1), plain, "q4_k_m")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(plain).tensors}
    mixed = [n for n in types if n.endswith("attn_v.weight") and types[n] != types[n.replace("attn_v", "attn_q")]]
    fused = tmp_path / "fused.gguf"
    done = fuse_gguf(plain, fused)
    assert len(done["kept"]) == len(mixed) > 0           # llama.cpp's Q4_K_M gives attn_v more bits
    names = _names(fused)
    for n in mixed:
        assert n in names                                # kept as it was
    a, b = _logits(plain, False), _logits(fused, False)
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))


def test_in_place_and_errors(tmp_path, llada_path):
    path = testing.write_model(tmp_path / "m.gguf", "qwen3", seed=2)
    before = _logits(path, False)
    fuse_gguf(path, path)                                # dst may be src
    assert "blk.0.attn_qkv.weight" in _names(path)
    np.testing.assert_allclose(_logits(path, False), before, rtol=1e-5, atol=1e-6)
    with pytest.raises(FuseError, match="not supported for the 'llada' architecture"):
        fuse_gguf(llada_path, tmp_path / "x.gguf")
    with pytest.raises(FileNotFoundError):
        fuse_gguf(tmp_path / "missing.gguf", tmp_path / "x.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(FuseError, match="not a readable GGUF"):
        fuse_gguf(bad, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob("*.part"))


def test_the_fuse_command(tmp_path):
    path = testing.write_model(tmp_path / "m.gguf", "llama", seed=4)
    out = tmp_path / "f.gguf"
    proc = subprocess.run([sys.executable, "-m", "llamadiff", "fuse", str(path), "-o", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "fused tensors (llama)" in proc.stdout and "blk.0.ffn_gate_up.weight" in _names(out)
    proc = subprocess.run([sys.executable, "-m", "llamadiff", "fuse", str(tmp_path / "nope.gguf"), "-o", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("llamadiff: error:")


def _with_mlp_biases(src, dst):
    """A llama file that also holds the optional ffn_gate / ffn_up biases."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(dst, "llama")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY and len(field.types) > 1 else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub)
    rng = np.random.default_rng(0)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.array(t.data))
        if t.name.endswith("ffn_gate.weight"):
            n = t.data.shape[0]
            for part in ("ffn_gate", "ffn_up"):
                writer.add_tensor(t.name.replace("ffn_gate.weight", f"{part}.bias"),
                                  (rng.standard_normal(n) * 0.5).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def test_groups_with_companions_stay_apart_and_the_file_loads(tmp_path):
    # gate / up with biases: the fused matrix has no bias slot, so that group is left as it is
    biased = _with_mlp_biases(testing.write_model(tmp_path / "llama.gguf", "llama", seed=4), tmp_path / "b.gguf")
    fused = tmp_path / "fused.gguf"
    done = fuse_gguf(biased, fused)
    assert done["kept"] and all("kept apart for its biases" in k for k in done["kept"])
    names = _names(fused)
    assert "blk.0.attn_qkv.weight" in names and "blk.0.ffn_gate.bias" in names
    np.testing.assert_allclose(_logits(fused, True), _logits(biased, True), rtol=1e-5, atol=1e-6)
    # q/k/v with biases (qwen2) quantised so that some layers' parts differ in type: those
    # layers keep weights and biases apart, the others fuse both
    shape = testing.ModelShape(n_embd=256, n_layer=4, n_head=4, n_head_kv=2, head_dim=64, n_ff=512)
    plain = tmp_path / "qwen2-q4km.gguf"
    quantize(testing.write_model(tmp_path / "qwen2.gguf", "qwen2", shape=shape, seed=1), plain, "q4_k_m")
    done = fuse_gguf(plain, tmp_path / "qwen2-fused.gguf")
    names = _names(tmp_path / "qwen2-fused.gguf")
    kept = [k.split(" ")[0].rsplit(".", 1)[0] for k in done["kept"] if "attn_qkv" in k]
    assert kept
    for layer in kept:
        assert f"{layer}.attn_q.bias" in names and f"{layer}.attn_qkv.bias" not in names
    np.testing.assert_allclose(_logits(tmp_path / "qwen2-fused.gguf", False), _logits(plain, False),
                               rtol=1e-4, atol=1e-4)


def test_the_fused_file_keeps_the_mode_and_leaks_no_descriptor(tmp_path):
    import os
    path = testing.write_model(tmp_path / "m.gguf", "qwen3", seed=2)
    os.chmod(path, 0o644)
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        fuse_gguf(path, path)
    assert len(os.listdir("/proc/self/fd")) == fds
    assert (os.stat(path).st_mode & 0o777) == 0o644

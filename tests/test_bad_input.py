"""Bad model files give Python exceptions with clear messages -- never a crash."""

import subprocess
import sys
import textwrap

import gguf
import numpy as np
import pytest

from llamadiff import Model, ModelLoadError, UnsupportedModelError, default_model, testing


def test_nonexistent_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Model(tmp_path / "missing.gguf")


def test_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match="directory"):
        Model(tmp_path)


def test_wrong_path_type():
    with pytest.raises(TypeError, match="str or os.PathLike"):
        Model(42)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("definitely not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        Model(path)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        Model(empty)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_gguf(qwen3_path, tmp_path, keep):
    data = qwen3_path.read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelLoadError, match="could not load"):
        Model(path)


def test_unknown_architecture(tmp_path):
    path = tmp_path / "alien.gguf"
    writer = gguf.GGUFWriter(str(path), "nosucharch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="nosucharch"):
        Model(path)


def test_model_without_vocabulary(tmp_path, qwen3_path):
    # same weights, but the tokenizer says "no vocab"
    path = testing.write_qwen3(tmp_path / "novocab.gguf", metadata={"tokenizer.ggml.model": "none"})
    with pytest.raises((UnsupportedModelError, ModelLoadError)):
        Model(path)


def _duplicate_token_file(tmp_path, qwen3_path):
    """A copy whose vocabulary holds two equal strings: 'Ġt' renamed to 'Ġa' (same length)."""
    data = bytearray(qwen3_path.read_bytes())
    first = "Ġt".encode()
    second = "Ġa".encode()
    assert data.count(first) >= 1 and data.count(second) >= 1
    i = data.index(first)
    data[i:i + len(first)] = second
    path = tmp_path / "dup_tokens.gguf"
    path.write_bytes(bytes(data))
    return path


def test_duplicate_token_strings_do_not_abort(tmp_path, qwen3_path):
    """Upstream GGML_ASSERTs here (SIGABRT); our patch makes it a load error.

    Run in a child process so that a regression is seen as a signal, not a dead test run.
    """
    path = _duplicate_token_file(tmp_path, qwen3_path)
    code = textwrap.dedent(f"""
        from llamadiff import Model, ModelLoadError
        try:
            Model({str(path)!r})
        except ModelLoadError as e:
            print("ERR", e)
        else:
            print("LOADED")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"child died with {proc.returncode}: {proc.stderr[-500:]}"
    assert "ERR" in proc.stdout and "GGML_ASSERT" in proc.stdout


FUZZ_CHILD = textwrap.dedent("""
    import sys, random
    from pathlib import Path
    from llamadiff import Model, Context, LlamaDiffError
    src = Path(sys.argv[1]).read_bytes()
    out = Path(sys.argv[2])
    rng = random.Random(int(sys.argv[3]))
    counts = {"error": 0, "loaded": 0}
    for i in range(int(sys.argv[4])):
        data = bytearray(src)
        if i % 4 == 0:
            data = data[: rng.randrange(len(data))]
        else:
            # flips concentrated in the header + metadata, where the parser works hardest
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(min(len(data), 12000))
                data[pos] ^= 1 << rng.randrange(8)
        out.write_bytes(bytes(data))
        print(i, flush=True, file=sys.stderr)
        try:
            m = Model(out)
        except (LlamaDiffError, ValueError, OSError):
            counts["error"] += 1
            continue
        counts["loaded"] += 1
        try:
            with Context(m, n_ctx=32) as ctx:
                ctx.decode(list(range(min(8, m.n_vocab))))
        except LlamaDiffError:
            counts["error"] += 1
        m.close()
    print(counts)
""")


@pytest.mark.parametrize("arch", testing.ARCHS)
def test_fuzzed_files_never_kill_the_process(tmp_path, arch):
    """Byte-flipped and truncated copies either load and run, or raise; the process survives.

    (Before vendor/patches/0001 and 0002, such files hit GGML_ASSERTs that abort. Values
    that are well-formed but hostile are tests/test_fuzz_values.py's part.)
    """
    path = testing.write_model(tmp_path / f"{arch}.gguf", arch, seed=3)
    proc = subprocess.run(
        [sys.executable, "-c", FUZZ_CHILD, str(path), str(tmp_path / "fuzz.gguf"), "5", "300"],
        capture_output=True, text=True, timeout=600)
    last = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
    assert proc.returncode == 0, f"child died with {proc.returncode} after case {last}: {proc.stderr[-800:]}"
    assert "'error'" in proc.stdout


# -------------------------------------------------------------- tokenizer metadata (vocab_check)

@pytest.mark.parametrize("family", ["block", "full"])
@pytest.mark.parametrize("value", [276, 277, 10 ** 6, 2 ** 31])
def test_a_bos_outside_the_vocabulary_is_refused_on_each_shipped_model(tmp_path, family, value):
    """llama.cpp would put token 11 (',') in its place: the full model then answers 135779 to
    'sort 93715=', the block model with add_bos 11579."""
    path = testing.rewrite_model(default_model(family), tmp_path / "m.gguf",
                                 {"tokenizer.ggml.bos_token_id": value})
    with pytest.raises(ModelLoadError, match=rf"tokenizer.ggml.bos_token_id = {value} is not a token of the "
                                             r"vocabulary \(0..275\)"):
        Model(path)
    with pytest.raises(ModelLoadError, match="bos_token_id"):
        Model(path, vocab_only=True)          # the tokenizer alone would use it too


@pytest.mark.parametrize("key", ["eos_token_id", "eot_token_id", "padding_token_id", "mask_token_id",
                                 "unknown_token_id", "fim_pre_token_id"])
def test_every_special_token_id_must_be_in_the_vocabulary(tmp_path, key):
    path = testing.rewrite_model(default_model("block"), tmp_path / "m.gguf", {f"tokenizer.ggml.{key}": 5000})
    with pytest.raises(ModelLoadError, match=rf"tokenizer.ggml.{key} = 5000"):
        Model(path)


def _vocab_case(name):
    """A hostile tokenizer value on the shipped block model (a byte-level BPE vocabulary)."""
    from gguf import GGUFValueType as T
    reader_tokens = testing.read_model(default_model("block")).vocab.tokens
    n = len(reader_tokens)
    return {
        "bert": {"tokenizer.ggml.model": "bert"},
        "t5": {"tokenizer.ggml.model": "t5"},
        "no merges": {"tokenizer.ggml.merges": None},
        "garbage merges": {"tokenizer.ggml.merges": ([f"zz{i}qq" for i in range(40)], T.ARRAY)},
        "unrelated merges": {"tokenizer.ggml.merges": ([f"q{i} w{i}" for i in range(40)], T.ARRAY)},
        "token type 99": {"tokenizer.ggml.token_type": ([1] * (n - 1) + [99], T.ARRAY)},
        "all control": {"tokenizer.ggml.token_type": ([3] * n, T.ARRAY)},
        "all unused": {"tokenizer.ggml.token_type": ([5] * n, T.ARRAY)},
        "empty tokens": {"tokenizer.ggml.tokens": ([""] * n, T.ARRAY)},
    }[name]


@pytest.mark.parametrize("case,match", [
    ("bert", "'bert' \\(WordPiece\\), but the file has .* BPE merges"),
    ("t5", "'t5' \\(Unigram\\), but the file has .* BPE merges"),
    ("no merges", "merges is missing or empty"),
    ("garbage merges", "only 0 of the 40 entries of tokenizer.ggml.merges"),
    ("unrelated merges", "only 0 of the 40 entries of tokenizer.ggml.merges"),
    ("token type 99", "holds 99 \\(token 275\\), which is no token type"),
    ("all control", "makes only 0 of 276 tokens normal"),
    ("all unused", "makes only 0 of 276 tokens normal"),
    ("empty tokens", "276 of the 276 tokens of tokenizer.ggml.tokens are empty strings"),
])
def test_a_tokenizer_its_vocabulary_cannot_serve_is_refused(tmp_path, case, match):
    path = testing.rewrite_model(default_model("block"), tmp_path / "m.gguf", _vocab_case(case))
    with pytest.raises(ModelLoadError, match=match):
        Model(path)


def test_the_shipped_and_test_vocabularies_pass_the_checks(tmp_path):
    for family in ("block", "full"):
        with Model(default_model(family)) as m:
            assert m.n_vocab == 276
    for arch in testing.ARCHS:
        Model(testing.write_model(tmp_path / f"{arch}.gguf", arch)).close()

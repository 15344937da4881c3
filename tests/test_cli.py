"""The llamadiff command line."""

import json
import subprocess
import sys

import pytest

from llamadiff import testing
from llamadiff.cli import main


def cli(*args):
    proc = subprocess.run([sys.executable, "-m", "llamadiff", *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def test_generate_text(qwen3_path, capsys):
    assert main(["generate", "-m", str(qwen3_path), "-p", "hello", "-n", "8", "--stop", "zzz"]) == 0
    assert capsys.readouterr().out.strip()


def test_generate_json_matches_api(qwen3_path, qwen3_model, capsys):
    from llamadiff import Generator

    assert main(["generate", "-m", str(qwen3_path), "-p", "hello", "-n", "8", "-b", "4",
                 "--strategy", "sequential", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    ref = Generator(qwen3_model, n_ctx=4096).generate("hello", max_new_tokens=8, block_length=4,
                                                     strategy="sequential")
    assert data["tokens"] == ref.tokens and data["stop_reason"] == ref.stop_reason
    assert data["stats"]["decode_calls"] > 0


def test_generate_stream_and_visual(qwen3_path, capsys):
    assert main(["generate", "-m", str(qwen3_path), "-p", "hi", "-n", "8", "--stream"]) == 0
    assert main(["generate", "-m", str(qwen3_path), "-p", "hi", "-n", "8", "--visual",
                 "--stop", "zzz"]) == 0
    out = capsys.readouterr().out
    assert "[block 0 step 0]" in out and "░" in out


def test_a_canvas_model_streams_and_shows_its_canvas_settle(tmp_path, capsys):
    """DiffusionGemma on the command line: its own flags, a stream, --visual redrawing the argmax
    canvas each step (no mask glyphs: the canvas is always full), info naming the family."""
    path = testing.write_diffusion_gemma(tmp_path / "dg.gguf", seed=1)
    args = ["generate", "-m", str(path), "-p", "hello", "-n", "16", "--steps", "3", "--t-min", "0.3", "--seed", "2"]
    assert main(args + ["--stream"]) == 0
    assert main(args + ["--visual", "--stop", "zzz"]) == 0
    out = capsys.readouterr().out
    assert all(f"[block 0 step {k}]" in out for k in range(3))
    assert main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == "canvas"
    assert main(args + ["--temperature", "0.5"]) == 1
    assert "t_max down to t_min" in capsys.readouterr().err


def test_info(qwen3_path, capsys):
    assert main(["info", str(qwen3_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "qwen3" and info["family"] == "block"
    assert info["mask_token"]["text"] == "<|MASK|>" and info["n_layer"] == 2
    assert info["block_diffusion_problem"] is None


@pytest.mark.parametrize("args,match", [
    (["generate", "-m", "/nonexistent.gguf", "-p", "x"], "not found"),
    (["generate", "-m", "{qwen3}", "-p", "x", "-b", "0"], "block_length"),
    (["generate", "-m", "{qwen3}", "-p", "x", "-n", "100000"], "n_ctx"),
    (["info", "{llada}"], None),
])
def test_errors_are_one_line(args, match, qwen3_path, llada_path):
    args = [a.format(qwen3=qwen3_path, llada=llada_path) for a in args]
    rc, out, err = cli(*args)
    if match is None:
        assert rc == 0
        return
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llamadiff: error:") and match in lines[0]


def test_full_family_generate(llada_path, dream_path):
    rc, out, err = cli("generate", "-m", llada_path, "-p", "x", "-n", "16", "--diffusion-block-length", "8",
                       "--cache", "dual", "--parallel", "threshold", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["stats"]["cache"] == "dual" and res["stats"]["parallel"] == "threshold"
    assert res["stats"]["steps_per_block"] and res["stats"]["schedule"] == "block"
    rc, out, err = cli("generate", "-m", dream_path, "-p", "x", "-n", "8", "--visual")
    assert rc == 0, err
    assert "[block 0 step 7]" in out and "░" in out
    rc, _, err = cli("generate", "-m", llada_path, "-p", "x", "-n", "8", "-b", "8", "--eps", "0.01")
    assert rc == 1 and "not both" in err


def test_chat_session(qwen3_path):
    proc = subprocess.run([sys.executable, "-m", "llamadiff", "chat", "-m", str(qwen3_path), "-n", "8"],
                          input="hello\n/reset\nagain\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("> ") >= 3          # three prompts shown, then EOF ends the chat


def test_generate_in_every_mode_and_with_token_editing(qwen3_path, qwen3_model, capsys):
    """--mode and --editing-threshold from the command line give the API's tokens."""
    from llamadiff import Generator

    gen = Generator(qwen3_model, n_ctx=4096)
    for extra, opts in ((["-b", "4", "--mode", "speculative"], dict(mode="speculative", block_length=4)),
                        (["--mode", "autoregressive"], dict(mode="autoregressive")),
                        (["--strategy", "token_editing", "--editing-threshold", "0.01", "--max-post-steps", "3",
                          "--threshold", "0.02"],
                         dict(strategy="token_editing", editing_threshold=0.01, max_post_steps=3, threshold=0.02))):
        assert main(["generate", "-m", str(qwen3_path), "-p", "hello", "-n", "8", "--json"] + extra) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["tokens"] == gen.generate("hello", max_new_tokens=8, **opts).tokens
    assert main(["generate", "-m", str(qwen3_path), "-p", "hello", "-n", "8", "--mode", "speculative",
                 "--temperature", "0.5"]) != 0
    assert "lossless against greedy decoding" in capsys.readouterr().err

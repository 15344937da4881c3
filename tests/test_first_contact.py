"""What a new user types first: the CLI as a subprocess, llama-cpp-python's conventions."""

import subprocess
import sys

import pytest

from llamadiff import Generator, GenerationConfig, default_model


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "llamadiff", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_version():
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("llamadiff 0.") and "llama.cpp" in out.stdout


def test_info_without_a_path_describes_the_default_model():
    out = cli("info")
    assert out.returncode == 0, out.stderr
    assert "block-tiny.gguf" in out.stdout or "qwen3" in out.stdout


def test_visual_hides_the_end_of_generation_token():
    out = cli("generate", "-p", "sort 93715=", "--visual", "-t", "1")
    assert out.returncode == 0, out.stderr
    assert "13579" in out.stdout and "<|endoftext|>" not in out.stdout


def test_eval_refuses_zero_examples_and_prints_its_table_once():
    bad = subprocess.run([sys.executable, "-m", "llamadiff.eval", "--n", "0"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "must be >= 1" in bad.stderr and "Traceback" not in bad.stderr
    assert "python -m llamadiff.eval" in bad.stderr
    good = subprocess.run([sys.executable, "-m", "llamadiff.eval", "--n", "5", "--model", "block"],
                          capture_output=True, text=True, timeout=300)
    assert good.returncode == 0, good.stderr
    assert good.stdout.count("| model | mode |") == 1
    assert good.stdout.count("| block |") >= 1


def test_bench_says_how_long_it_takes(monkeypatch, capsys):
    from llamadiff import bench, cli as cli_module
    seen = []
    monkeypatch.setattr(bench, "main", lambda argv: seen.append(argv) or 0)
    assert cli_module.main(["bench"]) == 0
    assert "about 25 minutes" in capsys.readouterr().err
    assert cli_module.main(["bench", "--quick", "-t", "1"]) == 0
    assert "about 2 minutes" in capsys.readouterr().err and seen[-1][-2:] == ["--threads", "1"]


def test_progress_bar_ends_where_generation_stopped(capsys):
    pytest.importorskip("tqdm")
    with Generator(n_ctx=512, n_threads=1) as gen:
        out = gen.generate("sort 93715=", max_new_tokens=256, progress=True)
    err = capsys.readouterr().err
    assert out.text == "13579"
    assert "100%" in err.splitlines()[-1] or "100%" in err.split("\r")[-1]


def test_llama_cpp_python_conventions():
    with Generator(model_path=default_model(), n_ctx=256, n_threads=1) as gen:
        assert gen.generate("47+38=", max_tokens=8).text == "85"
        chunks = list(gen.generate("sort 93715=", max_tokens=16, stream=True))
        assert "".join(c.text for c in chunks) == "13579" and chunks[-1].stop_reason == "stop"
        with pytest.raises(TypeError, match=r"temprature \(did you mean temperature\?\)"):
            gen.generate("x", temprature=0.5)
        with pytest.raises(TypeError, match="not both"):
            gen.generate("x", max_tokens=3, max_new_tokens=4)
    assert GenerationConfig().replace(max_tokens=7).max_new_tokens == 7
    with pytest.raises(TypeError, match=r"n_ctxx \(did you mean n_ctx\?\)"):
        Generator(n_ctxx=5)
    with pytest.raises(TypeError, match="not both"):
        Generator(default_model(), model_path=default_model())


def test_tokenize_takes_llama_cpp_python_names():
    with Generator(n_ctx=64, n_threads=1) as gen:
        m = gen.model
        assert m.tokenize("abc", add_bos=False) == m.tokenize("abc", add_special=False)
        assert m.tokenize("abc", add_bos=True) == m.tokenize("abc", add_special=True)


def test_thread_default_leaves_a_cpu_free(monkeypatch):
    from llamadiff import _core
    monkeypatch.setattr(_core.os, "sched_getaffinity", lambda pid: {0, 1})
    assert _core.default_threads() == 1
    monkeypatch.setattr(_core.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert 1 <= _core.default_threads() <= 7
    monkeypatch.setattr(_core.os, "sched_getaffinity", lambda pid: {0})
    assert _core.default_threads() == 1


def test_full_model_answers_with_its_own_generation_length(tmp_path):
    """The shipped full-diffusion model denoises 24 positions in all (diffusion.seq_length):
    without max_new_tokens the Generator fills them after the prompt."""
    full = default_model("full")
    out = cli("generate", "-m", full, "-p", "47+38=", "-t", "1")
    assert out.returncode == 0 and out.stdout.strip() == "85", out.stdout + out.stderr
    with Generator(full, n_ctx=256, n_threads=1) as gen:
        res = gen.generate("sort 93715=")
        assert res.text == "13579" and res.stats["prompt_tokens"] + gen.default_max_new_tokens(
            res.stats["prompt_tokens"]) == 24
        assert [r.text for r in gen.generate(["47+38=", "rev python="])] == ["85", "nohtyp"]
        # the README's full-diffusion snippet, as written
        out = gen.generate("47+38=", block_length=32, algorithm="confidence", cache="dual",
                           parallel="threshold", threshold=0.9)
        assert out.text == "85"
        assert gen.generate("47+38=", max_new_tokens=5).stats["generated_tokens"] <= 5


def test_the_readme_decoding_modes_snippet_as_written():
    from llamadiff import default_model as shipped
    gen = Generator(shipped("block"))
    spec = gen.generate("sort 93715=", mode="speculative", max_new_tokens=8, stop=[])
    ar = gen.generate("sort 93715=", mode="autoregressive", max_new_tokens=8, stop=[])
    assert spec.tokens == ar.tokens and spec.stats["verify_passes"] < 8      # the README shows 7
    out = gen.generate("sort 93715=", strategy="token_editing", threshold=0.5, editing_threshold=0)
    assert out.text == "13579"


def test_gen_length_key(tmp_path):
    from llamadiff import testing
    path = testing.write_model(tmp_path / "llada.gguf", "llada", metadata={"diffusion.gen_length": 7})
    with Generator(path, n_ctx=128, n_threads=1) as gen:
        assert gen.default_max_new_tokens(3) == 7
        assert len(gen.generate("hi", stop=[]).tokens) == 7


def test_the_shipped_model_says_what_it_knows():
    out = cli("generate", "-p", "2+2=", "-t", "1")
    assert out.returncode == 0 and "know five small tasks only" in out.stderr
    assert "two two-digit numbers" in out.stderr and "sorting 4 to 6 digits" in out.stderr
    good = cli("generate", "-p", "47+38=", "-t", "1")
    assert good.stdout.strip() == "85" and "five small tasks" not in good.stderr
    info = cli("info")
    assert "knows" in info.stdout and "two two-digit numbers" in info.stdout
    chat = subprocess.run([sys.executable, "-m", "llamadiff", "chat", "-t", "1"], input="2+2=\n",
                          capture_output=True, text=True, timeout=120)
    assert chat.returncode == 0 and "know five small tasks only" in chat.stderr


def test_steps_key(tmp_path):
    """diffusion.steps: the model's default steps (block: per block, capped by the block
    length; full: all steps, capped at one per new token); a corrupt value is ignored."""
    from llamadiff import testing
    block = testing.write_model(tmp_path / "q.gguf", "qwen3", block_length=4, metadata={"diffusion.steps": 2})
    with Generator(block, n_ctx=128, n_threads=1) as gen:
        assert gen.default_steps == 2
        out = gen.generate("hi", max_new_tokens=8, stop=[], strategy="low_confidence_static")
        assert set(out.stats["committed_per_step"]) == {2}       # 4 positions a block, in 2 steps
        one = gen.generate("hi", max_new_tokens=8, stop=[], block_length=1)
        assert set(one.stats["committed_per_step"]) == {1}
    full = testing.write_model(tmp_path / "l.gguf", "llada", metadata={"diffusion.steps": 3})
    with Generator(full, n_ctx=128, n_threads=1) as gen:
        assert gen.generate("hi", max_new_tokens=8, block_length=8, stop=[]).stats["steps"] == 3
        assert gen.generate("hi", max_new_tokens=2, block_length=2, stop=[]).stats["steps"] == 2
    for bad in (-3, 0, "many"):
        path = testing.write_model(tmp_path / f"bad{bad}.gguf", "llada", metadata={"diffusion.steps": bad})
        with Generator(path, n_ctx=128, n_threads=1) as gen:
            assert gen.default_steps is None
            assert gen.generate("hi", max_new_tokens=4, block_length=4, stop=[]).stats["steps"] == 4


def test_chat_on_the_shipped_models():
    """The shipped models' chat template passes the latest task on as the plain prompt they were
    trained on: `llamadiff chat` and chat-message prompts get their real answers."""
    proc = subprocess.run([sys.executable, "-m", "llamadiff", "chat", "-t", "1"], input="47+38=\nsort 93715=\n",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    replies = [line.split("> ", 1)[-1].strip() for line in proc.stdout.splitlines()[1:]]
    assert replies[:2] == ["85", "13579"], proc.stdout
    with Generator(default_model("full"), n_ctx=256, n_threads=1) as gen:
        assert gen.generate("47+38=", chat=True).text == "85"
        assert gen.generate([{"role": "system", "content": "be brief"},
                             {"role": "user", "content": "rev python="}]).text == "nohtyp"
    # the README's chat snippet, as written
    gen = Generator()
    history = [{"role": "user", "content": "47+38="}]
    assert gen.generate(history).text == "85"
    assert gen.model.apply_chat_template(history, template=gen.chat_template) == "47+38="
    gen.close()


def test_chat_without_a_template_says_so_before_asking(tmp_path):
    from llamadiff import testing
    path = testing.write_model(tmp_path / "plain.gguf", "llada")
    proc = subprocess.run([sys.executable, "-m", "llamadiff", "chat", "-m", str(path)], input="hi\n",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "no chat template" in proc.stderr and "--chat-template" in proc.stderr
    assert "> " not in proc.stdout                        # refused before the first prompt


def test_a_model_steps_default_fits_the_schedule(tmp_path):
    """A model's diffusion.steps below the number of blocks of a call is raised to one per block."""
    from llamadiff import testing
    path = testing.write_model(tmp_path / "l3.gguf", "llada", metadata={"diffusion.steps": 3})
    with Generator(path, n_ctx=512, n_threads=1) as gen:
        assert gen.generate("hi", max_new_tokens=128, stop=[]).stats["steps"] == 4          # 4 blocks of 32
        assert gen.generate("hi", max_new_tokens=8, block_length=4, stop=[]).stats["steps"] == 3



def test_cli_takes_the_names_users_reach_for():
    """--max-tokens / --n-predict (the API's and llama.cpp's names), a positional prompt, and
    -m block / -m full for the shipped models."""
    assert cli("generate", "sort 93715=", "--max-tokens", "3", "-t", "1").stdout.strip() == "135"
    assert cli("generate", "-p", "47+38=", "--n-predict", "1", "-t", "1").stdout.strip() == "8"
    assert cli("generate", "-m", "full", "sort 93715=", "-t", "1").stdout.strip() == "13579"
    assert cli("generate", "-m", "block", "rev python=", "-t", "1").stdout.strip() == "nohtyp"
    both = cli("generate", "-p", "a", "b")
    assert both.returncode == 1 and "give the prompt once" in both.stderr
    none = cli("generate")
    assert none.returncode == 1 and "no prompt" in none.stderr
    info = cli("info", "full", "--json")
    import json
    data = json.loads(info.stdout)
    assert data["family"] == "full" and isinstance(data["n_vocab"], int)
    assert data["block_diffusion_problem"] is None and "?B" not in data["description"]
    assert "block_diffusion_problem" not in cli("info", "full").stdout
    assert json.loads(cli("info", "--json").stdout)["block_length"] == 4      # the shipped block model's


@pytest.mark.parametrize("args,where,suggestion", [
    (("generate", "--max-tokns", "4", "x"), "llamadiff generate", "--max-tokens"),
    (("serve", "--prot", "9"), "llamadiff serve", "--port"),
    (("info", "--jsn"), "llamadiff info", "--json"),
    (("bench", "--quik"), "llamadiff bench", "--quick"),
])
def test_a_wrong_flag_is_one_line_with_the_command_and_a_suggestion(args, where, suggestion):
    out = cli(*args)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{where}: error:"), out.stderr
    assert f"did you mean {suggestion}?" in lines[0]


def test_help_texts_say_what_each_flag_does():
    for command, flags in (("serve", ["--port", "--max-tokens", "--read-timeout", "--drain-seconds"]),
                           ("bench", ["--quick", "--blocks", "--threads"]), ("info", ["--json"]),
                           ("convert", ["--outtype", "--fuse"]), ("generate", ["--strategy"])):
        text = " ".join(cli(command, "--help").stdout.split())
        for flag in flags:
            after = text.split(flag, 1)[1][:200]
            assert len(after.split()) > 3, (command, flag, after)     # a help text, not just the flag
    assert "default low_confidence_dynamic" in " ".join(cli("generate", "--help").stdout.split())


def test_visual_shows_each_block_with_exactly_its_masks():
    out = cli("generate", "sort 93715=", "--visual", "--strategy", "low_confidence_static", "-t", "1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    starts = [ln for ln in lines if "start]" in ln]
    # "sort 93715=" ends inside block 2; block 3 starts with its 4 positions masked
    assert starts[-1].endswith("13" + "\u2591" * 4), starts
    steps = [ln for ln in lines if "[block 3 step" in ln]
    assert [ln.split("] ")[1].count("\u2591") for ln in steps] == [3, 2, 1, 0]
    assert lines[-1] == "13579"


def test_chat_help_is_not_sent_to_the_model():
    proc = subprocess.run([sys.executable, "-m", "llamadiff", "chat", "-t", "1"], input="/help\n/nope\n47+38=\n",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("/reset") >= 2 and "unknown command /nope" in proc.stdout
    assert "85" in proc.stdout


def test_a_prompt_longer_than_the_model_learned_warns(recwarn):
    from llamadiff.errors import TrainedLengthWarning
    with Generator(default_model("full"), n_ctx=512, n_threads=1) as gen:
        gen.generate("sort 93715=", max_new_tokens=6)
        assert not [w for w in recwarn if issubclass(w.category, TrainedLengthWarning)]
        with pytest.warns(TrainedLengthWarning, match="trained on sequences of 24"):
            gen.generate("sort 93715= " * 10)
    out = cli("generate", "-m", "full", "sort 93715= " * 10, "-t", "1")
    assert "llamadiff: warning: prompt (111 tokens)" in out.stderr


def test_the_readme_batch_snippet_answers_as_written():
    gen = Generator(n_threads=1)
    results = gen.generate(["12+34=", "sort 4817=", "rev block="], n_parallel=8, max_new_tokens=16)
    assert [r.text for r in results] == ["46", "1478", "kcolb"]
    gen.close()

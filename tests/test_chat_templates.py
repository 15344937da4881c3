"""Chat templates: the real families' Jinja templates, written into test GGUFs, render what
their model cards' tokenizers render; the sandbox holds; bad templates are clear errors.

The expected texts are written out by hand from each format's definition, not produced by
the renderer under test."""

import pathlib
import subprocess
import sys

import pytest

from llamadiff import ChatTemplateError, Generator, Model, UnsupportedModelError, default_model, tasks, testing
from llamadiff import chat
from llamadiff._core import chat_builtin_templates

TEMPLATES = pathlib.Path(__file__).parent / "chat_templates"
BOS = "<|endoftext|>"          # the test vocab's BOS text (bos id = eos id, as in Qwen vocabs)


def template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8").rstrip("\n")


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    """One test GGUF per family, carrying that family's published template."""
    d = tmp_path_factory.mktemp("chat")
    out = {}
    for name, arch in (("llada", "llada"), ("dream", "dream"), ("qwen3", "qwen3")):
        path = d / f"{name}.gguf"
        testing.write_model(path, arch, metadata={"tokenizer.chat_template": template(name)})
        out[name] = str(path)
    return out


def expect_ids(model, text):
    return model.tokenize(text, add_special=False, parse_special=True)


def test_llada_template(family_models):
    msgs = [{"role": "user", "content": "  What is 2+2?  "}]        # LLaDA's template trims content
    want = (BOS + "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n")
    with Model(family_models["llada"]) as m:
        assert m.apply_chat_template(msgs) == want
        # llama.cpp's matcher would call this "llama3" and drop the BOS: the format is not LLaDA's
        assert m.apply_chat_template(msgs, template="llama3") != want
    with Generator(family_models["llada"], n_ctx=256, n_threads=1) as gen:
        ids = gen.prompt_tokens(msgs)
        assert ids == expect_ids(gen.model, want)
        assert ids[0] == gen.model.bos_token_id       # the template's bos_token became the BOS token


def test_dream_template_adds_its_default_system_message(family_models):
    msgs = [{"role": "user", "content": "hi"}]
    want = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    with Model(family_models["dream"]) as m:
        assert m.apply_chat_template(msgs) == want
        assert m.apply_chat_template(msgs, add_generation_prompt=False) == want[:-len("<|im_start|>assistant\n")]
    with Generator(family_models["dream"], n_ctx=256, n_threads=1) as gen:
        assert gen.prompt_tokens(msgs) == expect_ids(gen.model, want)
        out = gen.generate(msgs, max_new_tokens=4, steps=4)          # a chat prompt generates
        assert len(out.prompt_tokens) == len(expect_ids(gen.model, want))


def test_qwen3_template_multi_turn_thinking_and_variables(family_models):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "<think>\nr\n</think>\n\nb"}, {"role": "user", "content": "c"}]
    base = ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na<|im_end|>\n"
            "<|im_start|>assistant\nb<|im_end|>\n<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\n")
    with Model(family_models["qwen3"]) as m:
        assert m.apply_chat_template(msgs) == base                 # earlier reasoning is dropped
        assert m.apply_chat_template(msgs, enable_thinking=False) == base + "<think>\n\n</think>\n\n"


def test_qwen3_template_tools_and_tool_calls(family_models):
    tools = [{"type": "function", "function": {"name": "zeit", "description": "Uhrzeit für eine Zone",
                                               "parameters": {"type": "object"}}}]
    msgs = [{"role": "user", "content": "time?"},
            {"role": "assistant", "content": None,
             "tool_calls": [{"function": {"name": "zeit", "arguments": {"tz": "UTC"}}}]},
            {"role": "tool", "content": "12:00"}]
    want = ("<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user query."
            "\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
            '{"type": "function", "function": {"name": "zeit", "description": "Uhrzeit für eine Zone", '
            '"parameters": {"type": "object"}}}'
            "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
            'within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
            "<args-json-object>}\n</tool_call><|im_end|>\n"
            "<|im_start|>user\ntime?<|im_end|>\n"
            '<|im_start|>assistant\n<tool_call>\n{"name": "zeit", "arguments": {"tz": "UTC"}}\n</tool_call><|im_end|>\n'
            "<|im_start|>user\n<tool_response>\n12:00\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n")
    with Model(family_models["qwen3"]) as m:
        assert m.apply_chat_template(msgs, tools=tools) == want


def test_shipped_models_template_is_rendered_as_jinja_not_guessed():
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "47+38="},
            {"role": "assistant", "content": "85"}, {"role": "user", "content": "sort 93715="}]
    for family, bos in (("block", False), ("full", True)):
        with Model(default_model(family), vocab_only=True) as m:
            assert m.chat_template == tasks.chat_template(bos=bos)
            # the latest task, as the plain prompt the model was trained on
            assert m.apply_chat_template(msgs) == (BOS if bos else "") + "sort 93715="
    for family in ("block", "full"):
        with Generator(default_model(family), n_ctx=256, n_threads=1) as gen:
            for prompt, _ in tasks.examples(25, split="test", seed=3):
                assert gen.prompt_tokens([{"role": "user", "content": prompt}]) == gen.prompt_tokens(prompt)


def test_builtin_names_still_go_to_llama_cpp(qwen3_model):
    assert "chatml" in chat_builtin_templates() and "llama3" in chat_builtin_templates()
    msgs = [{"role": "user", "content": "x"}]
    assert (qwen3_model.apply_chat_template(msgs, template="chatml")
            == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(TypeError, match="no template variables"):
        qwen3_model.apply_chat_template(msgs, template="chatml", enable_thinking=False)


@pytest.mark.parametrize("bad, match", [
    ("{{ ''.__class__.__mro__ }}", "unsafe"),
    ("{{ messages.append(1) }}", "unsafe"),
    ("{{ cycler.__init__.__globals__ }}", "unsafe"),
    ("{% for i in range(10**9) %}{% endfor %}", "range"),
    ("{{ raise_exception('only user turns') }}", "refused these messages: only user turns"),
    ("{% for m in messages %}", "not valid Jinja"),
    ("{{ messages[0]['content'] + 1 }}", "failed on these messages"),
    ("{{ 'x' * 10**10 }}", "repeats a value"),          # allocations are bounded too
    ("{{ [0] * 2**30 }}", "repeats a value"),
    ("{{ 2 ** 100000 }}", "too large a power"),
])
def test_templates_run_sandboxed_and_fail_clearly(qwen3_model, bad, match):
    with pytest.raises(ChatTemplateError, match=match):
        qwen3_model.apply_chat_template([{"role": "user", "content": "x"}], template=bad)


def test_a_misspelt_name_is_not_taken_for_a_template(qwen3_model):
    with pytest.raises(ChatTemplateError, match="did you mean 'chatml'"):
        qwen3_model.apply_chat_template([{"role": "user", "content": "x"}], template="chatmll")


@pytest.mark.parametrize("messages, error", [
    ([], ValueError), ("hello", TypeError), ([{"role": "user"}], ValueError),
    ([{"role": 1, "content": "x"}], TypeError), ([{"role": "user", "content": 5}], TypeError),
])
def test_bad_messages(qwen3_model, messages, error):
    with pytest.raises(error):
        qwen3_model.apply_chat_template(messages)


def test_model_without_a_template_says_what_to_do(tmp_path):
    path = tmp_path / "plain.gguf"
    testing.write_model(path, "llada")                  # the llada test model has no template
    with Generator(str(path), n_ctx=128, n_threads=1) as gen:
        assert gen.chat_template is None
        with pytest.raises(UnsupportedModelError, match="chat_template="):
            gen.generate([{"role": "user", "content": "x"}], max_new_tokens=2)
        with pytest.raises(TypeError, match=r"Generator\(\.\.\., chat_template=\.\.\.\)"):
            gen.generate("x", template="chatml")
    with Generator(str(path), n_ctx=128, n_threads=1, chat_template="chatml") as gen:
        ids = gen.prompt_tokens([{"role": "user", "content": "x"}])
        assert ids[1:] == expect_ids(gen.model, "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n")


def test_generator_checks_its_template_before_loading():
    with pytest.raises(ChatTemplateError, match="not valid Jinja"):
        Generator("/nonexistent/model.gguf", chat_template="{% if %}")
    with pytest.raises(TypeError):
        Generator("/nonexistent/model.gguf", chat_template=42)


def test_a_corrupt_template_in_a_file_is_a_clear_error(tmp_path):
    path = tmp_path / "corrupt.gguf"
    testing.write_model(path, "qwen3", metadata={"tokenizer.chat_template": "{% for message in messages %}{{"})
    with Generator(str(path), n_ctx=128, n_threads=1) as gen:
        with pytest.raises(ChatTemplateError):
            gen.generate([{"role": "user", "content": "x"}], max_new_tokens=2)
        assert gen.generate("x", max_new_tokens=2).stop_reason in ("stop", "length")   # plain prompts still run


def test_cli_chat_template_flag_takes_a_file_or_a_name(tmp_path, family_models):
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{{ messages[-1]['content'] }}")
    for value in (str(tpl), "chatml"):
        out = subprocess.run([sys.executable, "-m", "llamadiff", "generate", "-m", family_models["qwen3"], "--chat",
                              "-p", "hi", "-n", "4", "-t", "1", "--json", "--chat-template", value],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
    bad = subprocess.run([sys.executable, "-m", "llamadiff", "generate", "--chat", "-p", "hi",
                          "--chat-template", "chatmll"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "did you mean 'chatml'" in bad.stderr and "Traceback" not in bad.stderr


def test_tojson_takes_transformers_arguments(qwen3_model):
    msgs = [{"role": "user", "content": "x"}]
    tpl = "{% for t in tools %}{{ t | tojson(ensure_ascii=False) }}|{{ t | tojson(ensure_ascii=True, sort_keys=True) }}{% endfor %}"
    assert (qwen3_model.apply_chat_template(msgs, template=tpl, tools=[{"b": "ü", "a": 1}])
            == '{"b": "ü", "a": 1}|{"a": 1, "b": "\\u00fc"}')


@pytest.mark.parametrize("value, match", [("", "empty"), ("   ", "empty"), ("/no/such/t.jinja", "file path")])
def test_template_values_that_are_no_template(value, match):
    with pytest.raises(ChatTemplateError, match=match):
        Generator("/nonexistent/model.gguf", chat_template=value)


def test_chat_template_kwargs_reach_the_template(family_models):
    msgs = [{"role": "user", "content": "a"}]
    with Generator(family_models["qwen3"], n_ctx=256, n_threads=1,
                   chat_template_kwargs={"enable_thinking": False}) as gen:
        want = "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        assert gen.prompt_tokens(msgs) == expect_ids(gen.model, want)
        with pytest.raises(TypeError, match=r"Generator\(\.\.\., chat_template_kwargs=\.\.\.\)"):
            gen.generate(msgs, enable_thinking=False)
    with pytest.raises(TypeError):
        Generator(family_models["qwen3"], chat_template_kwargs=["enable_thinking"])


def test_builtin_formats_get_the_vocab_bos(tmp_path):
    path = tmp_path / "llada.gguf"
    testing.write_model(path, "llada")                 # its vocab adds a BOS to prompts
    with Generator(str(path), n_ctx=128, n_threads=1, chat_template="chatml") as gen:
        ids = gen.prompt_tokens([{"role": "user", "content": "hi"}])
        assert ids[0] == gen.model.bos_token_id
        assert ids[1:] == expect_ids(gen.model, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_shipped_template_refuses_a_conversation_without_a_user_message():
    with Generator(n_ctx=256, n_threads=1) as gen:
        with pytest.raises(ChatTemplateError, match="user message"):
            gen.generate([{"role": "system", "content": "hi"}])


def test_cli_generate_chat_without_a_template_names_the_flag(tmp_path):
    path = tmp_path / "plain.gguf"
    testing.write_model(path, "llada")
    out = subprocess.run([sys.executable, "-m", "llamadiff", "generate", "-m", str(path), "--chat", "-p", "hi"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "--chat-template" in out.stderr and "Generator(" not in out.stderr
    bad = tmp_path / "bad.jinja"
    bad.write_bytes(b"\xff\xfe{{ x }}")
    out = subprocess.run([sys.executable, "-m", "llamadiff", "generate", "--chat", "-p", "hi", "--chat-template",
                          str(bad)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "not UTF-8" in out.stderr and str(bad) in out.stderr


def test_server_with_a_broken_template_answers_500_and_still_completes(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from llamadiff import Engine
    from llamadiff.server import create_app
    path = tmp_path / "broken.gguf"
    testing.write_model(path, "qwen3", block_length=4, metadata={"tokenizer.chat_template": "{% for %}"})
    with Engine(str(path), n_parallel=2, n_ctx=256, n_threads=1) as engine:
        with TestClient(create_app(engine)) as client:
            chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                              "max_tokens": 4})
            assert chat.status_code == 500 and chat.json()["error"]["code"] == "broken_chat_template"
            assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4}).status_code == 200


HOSTILE_TEMPLATES = [
    # time: loops that print nothing, or print little
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x", "ran for more than"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}", "ran for more than"),
    ("{{ lipsum(1000000) }}", "lipsum"),
    # size: one call that would build a huge string, or many small pieces
    ("{{ 'x'|center(500000000) }}", "center filter"),
    ("{{ 'x'.center(500000000) }}", "str.center"),
    ("{{ 'x'.ljust(10**9) }}", "str.ljust"),
    ("{{ 'x'|indent(500000000) }}", "indent filter"),
    ("{{ '%01000000000d' % 5 }}", "a % field"),
    ("{{ '%01000000000d'|format(5) }}", "a % field"),
    ("{{ '{:>1000000000}'.format(5) }}", "a format field"),
    ("{{ '{0:{1}}'.format(5, 1000000000) }}", "a format field"),
    ("{{ '%(a)999999999s' % {'a': 1} }}", "a % field"),            # behind a mapping key
    ("{{ '{:0>999999999}'.format(1) }}", "a format field"),         # behind a digit as the fill
    ("{{ '%*s' % (999999999, 'x') }}", "a % field"),                # the width from an argument
    ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "printed more than"),
]


@pytest.mark.parametrize("template,match", HOSTILE_TEMPLATES)
def test_a_hostile_template_is_bounded_in_time_and_size(template, match):
    with pytest.raises(ChatTemplateError, match=match):       # the match names the bound that held
        chat.render(template, [{"role": "user", "content": "hi"}], max_chars=1 << 20)


def test_the_bounds_leave_real_templates_alone(qwen3_model):
    msgs = [{"role": "user", "content": "x" * 5000}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "again"}]
    text = qwen3_model.apply_chat_template(msgs, template=open(TEMPLATES / "qwen3.jinja").read())
    assert "x" * 5000 in text and "again" in text
    assert chat.render("{{ '%5d|%-4s|%.2f' % (3, 'a', 1.5) }}{{ 'a'|center(9) }}{{ '{:>6}'.format(1) }}",
                       [{"role": "user", "content": "hi"}]) == "    3|a   |1.50    a         1"
    assert chat.render("{{ '{:>8.2f}|{:,}'.format(3.14159, 1000) }}{{ '%(x)s' % {'x': 'ok'} }}",
                       [{"role": "user", "content": "hi"}]) == "    3.14|1,000ok"


def test_a_generator_bounds_the_prompt_by_its_context(tmp_path):
    # a template that prints 10,000 characters per message: fine at n_ctx 4096, refused at 64
    path = testing.write_model(tmp_path / "m.gguf", "qwen3", metadata={
        "tokenizer.chat_template": "{% for m in messages %}{{ 'y' * 10000 }}{% endfor %}"})
    with Generator(path, n_ctx=64, n_threads=1) as small:
        with pytest.raises(ChatTemplateError, match="printed more than 4,096 characters"):
            small.generate([{"role": "user", "content": "hi"}], max_new_tokens=4)
    with Generator(path, n_ctx=4096, n_threads=1) as big:
        assert len(big.prompt_tokens([{"role": "user", "content": "hi"}], chat=True)) > 0

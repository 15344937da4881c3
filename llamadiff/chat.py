"""Chat templates: a model's Jinja ``tokenizer.chat_template``, rendered in a sandbox.

Model authors write their chat format as a Jinja template (Hugging Face's
``tokenizer_config.json`` carries it, and converters copy it into the GGUF). The format a
model was trained on is exactly what that template prints, so llamadiff renders the
template itself, with Jinja2 in its immutable sandbox -- as ``transformers`` and
llama-cpp-python do -- rather than guessing a format from the text: llama.cpp's built-in
matcher maps any template that mentions ``<|im_start|>`` to ChatML, for instance, whatever
else it says. llama.cpp's built-in formats stay available by name (``template="chatml"``,
``"llama3"``, ...; ``llamadiff._core.chat_builtin_templates()`` lists them).

What a template sees (the conventions of ``transformers``' ``apply_chat_template``):
``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token``, ``tools`` (None unless
given) and any extra keyword; the ``tojson`` filter (``ensure_ascii`` default False,
``indent``, ``separators``, ``sort_keys``); ``raise_exception(message)``;
``strftime_now(format)``; the ``loopcontrols`` extension; ``{% generation %}`` blocks render
their body. Blocks are trimmed (``trim_blocks``, ``lstrip_blocks``).

The sandbox gives a template no access to Python internals or the file system, caps
``range()`` (100,000) and the strings and lists ``*`` may build; a template that fails -- bad
syntax, a call the sandbox refuses, its own ``raise_exception`` -- raises
``ChatTemplateError`` naming why. A render is also bounded in time and size, as code from a
model file must be:
- **time:** ``RENDER_SECONDS`` (2 s; a real template takes about a millisecond). A trace
  function on the rendering thread checks the clock as the template's code runs, so loops
  that print nothing stop too;
- **size:** what the template prints stops at ``max_chars`` (``render``'s argument; a
  Generator passes 64 characters per token of its context, a prompt longer than that could
  not run), and the calls that would build a huge string in one go -- ``center`` /
  ``ljust`` / ``rjust`` / ``zfill`` / ``indent`` / ``wordwrap`` / ``truncate`` widths,
  ``%`` and ``format`` field widths, ``lipsum`` -- are refused above ``MAX_REPEAT``
  characters before they allocate. A ``MemoryError`` inside a render becomes a
  ``ChatTemplateError`` too.
"""

from __future__ import annotations

import datetime
import difflib
import functools
import json
import os
import re
import string
import sys
import time
from typing import Any, Mapping, Optional, Sequence

from llamadiff.errors import ChatTemplateError

__all__ = ["render", "check_messages", "check_template"]


# llama.cpp's built-in formats: ``llamadiff._core`` hands over its lister when it loads (the
# package imports it first), so that this module needs nothing of the native core
_builtin_templates = None


def _register_builtin_templates(lister) -> None:
    global _builtin_templates
    _builtin_templates = lister


def check_template(template) -> bool:
    """True for a built-in format's name, False for Jinja text that compiles; TypeError or
    ChatTemplateError otherwise. Text without Jinja markup is taken as a name: a misspelt
    name must not become a template that prints itself."""
    if not isinstance(template, str):
        raise TypeError(f"a chat template is Jinja text or a built-in format's name, not "
                        f"{type(template).__name__}")
    names = _builtin_templates()
    if template in names:
        return True
    if not template.strip():
        raise ChatTemplateError("the chat template is empty: give Jinja text or a built-in format's name")
    if "{{" not in template and "{%" not in template:
        if os.path.sep in template or template.endswith((".jinja", ".j2", ".txt")):
            hint = ("a file's text: Generator(chat_template=open(path).read()); the CLI's --chat-template "
                    "reads a file" if os.path.isfile(template) else "no such file either")
            raise ChatTemplateError(f"{template!r} looks like a file path, not a chat template ({hint})")
        close = difflib.get_close_matches(template, names, n=1, cutoff=0.6)
        raise ChatTemplateError(f"{template!r} is neither Jinja text nor a built-in chat format"
                                + (f" (did you mean {close[0]!r}?)" if close else "")
                                + " -- llamadiff._core.chat_builtin_templates() lists the formats")
    _compile(template)
    return False


def check_messages(messages) -> list:
    """The messages as a list of plain dicts, each with a str ``role`` and a str (or, for a
    message with tool calls, None) ``content``; a ValueError / TypeError says what is wrong."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError("messages must be a list of {'role': ..., 'content': ...} mappings")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a mapping with 'role' and 'content'")
        if not isinstance(m["role"], str):
            raise TypeError(f"message {i}: role must be str, not {type(m['role']).__name__}")
        if not (isinstance(m["content"], str) or (m["content"] is None and m.get("tool_calls"))):
            raise TypeError(f"message {i}: content must be str, not {type(m['content']).__name__}")
        out.append(dict(m))
    if not out:
        raise ValueError("messages is empty")
    return out


RENDER_SECONDS = 2.0        # the longest a render may take
MAX_RENDER_CHARS = 1 << 24  # what a render may print when the caller sets no bound (16 Mi characters)
MAX_REPEAT = 1 << 20        # the longest string or list one operation of a template may build


class _RenderTimeout(BaseException):
    """Raised into a render that ran past its time (a BaseException: no template-level
    ``except Exception`` in Jinja's runtime can swallow it)."""


def render(template: str, messages, *, add_generation_prompt: bool = True, bos_token: str = "",
           eos_token: str = "", tools: Optional[list] = None, max_chars: int = MAX_RENDER_CHARS,
           seconds: float = RENDER_SECONDS, **variables: Any) -> str:
    """The text ``template`` (Jinja) prints for ``messages``, bounded in time (``seconds``) and
    length (``max_chars``): past either, a ChatTemplateError says which."""
    if not isinstance(template, str):
        raise TypeError(f"a chat template is Jinja text, not {type(template).__name__}")
    messages = check_messages(messages)
    compiled = _compile(template)
    pieces, size = [], 0
    deadline = time.monotonic() + seconds
    events = 0

    def trace(frame, event, arg):           # on every line of the template's (and Jinja's) code
        nonlocal events
        events += 1
        if not events & 255 and time.monotonic() > deadline:
            raise _RenderTimeout
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        for piece in compiled.generate(messages=messages, add_generation_prompt=bool(add_generation_prompt),
                                       bos_token=bos_token, eos_token=eos_token, tools=tools, **variables):
            size += len(piece)
            if size > max_chars:
                raise ChatTemplateError(f"the chat template printed more than {max_chars:,} characters for "
                                        "these messages (more than the context could hold)")
            pieces.append(piece)
    except _RenderTimeout:
        raise ChatTemplateError(f"the chat template ran for more than {seconds:g} s on these messages "
                                "(a real template takes milliseconds): refused") from None
    except ChatTemplateError:
        raise
    except MemoryError:
        raise ChatTemplateError("the chat template ran out of memory on these messages") from None
    except Exception as e:          # the template's own fault: a bad call, a sandbox refusal
        raise ChatTemplateError(f"the chat template failed on these messages: "
                                f"{type(e).__name__}: {e}") from None
    finally:
        sys.settrace(previous)
    return "".join(pieces)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _raise_exception(message):
    raise ChatTemplateError(f"the chat template refused these messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _too_wide(what: str, n) -> None:
    if _number(n) and abs(n) > MAX_REPEAT:
        raise ChatTemplateError(f"the chat template asks {what} for {n} characters or items "
                                f"(more than {MAX_REPEAT:,}): refused")


# field widths and precisions of %-formatting (a mapping key, flags, width, precision) and of
# str.format specs ([[fill]align][sign][z][#][0][width][grouping][.precision][type]); a width
# taken from an argument ("*", a nested "{}") is refused outright
_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\d*|\*)(?:\.(\d*|\*))?")
_FORMAT_SPEC = re.compile(r"(?:.?[<>=^])?[+\- ]?z?#?0?(\d*)[,_]?(?:\.(\d*))?")
# methods of str that build a string as wide as a number argument
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
# filters whose arguments size what they build
_SIZED_FILTERS = ("center", "indent", "wordwrap", "truncate", "batch", "slice")


def _check_width(what: str, group) -> None:
    if group == "*":
        raise ChatTemplateError(f"the chat template takes the width of {what} from an argument: refused")
    if group:
        _too_wide(what, int(group))


def _check_percent(fmt) -> None:
    """A %-format string's widths and precisions."""
    if isinstance(fmt, str):
        for m in _PERCENT_FIELD.finditer(fmt):
            for group in m.groups():
                _check_width("a % field", group)


def _check_str_format(fmt) -> None:
    """A str.format string's field widths and precisions."""
    if not isinstance(fmt, str):
        return
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return                      # str.format raises the same on it
    for _, name, spec, _ in fields:
        if name is None or not spec:
            continue
        if "{" in spec:
            _check_width("a format field", "*")
        m = _FORMAT_SPEC.match(spec)
        for group in m.groups():
            _check_width("a format field", group)


def _checked_filter(name: str, fn):
    @functools.wraps(fn)
    def checked(*args, **kwargs):
        for a in list(args[1:]) + list(kwargs.values()):
            _too_wide(f"the {name} filter", a)
        return fn(*args, **kwargs)
    return checked


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # like transformers: keep non-ASCII text as is unless asked (a template's JSON goes to the model)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=32)
def _environment():
    try:
        import jinja2
        from jinja2 import nodes
        from jinja2.ext import Extension, loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:        # a declared dependency; only a broken install lacks it
        raise ChatTemplateError("rendering a chat template needs jinja2 (pip install jinja2)") from e

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` (training-time assistant masks in some
        templates): the body renders as is."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Sandbox(ImmutableSandboxedEnvironment):
        """Jinja2's immutable sandbox, with what builds a huge string in one go checked first:
        ``'x' * 10**10``, ``'%01000000000d' % 1`` or ``'x'.center(10**9)`` would otherwise
        allocate gigabytes before anything could stop them."""
        intercepted_binops = frozenset(["*", "**", "%"])

        def call_binop(self, context, operator, left, right):
            if operator == "**" and _number(left) and _number(right) and abs(right) > 64 and abs(left) > 1:
                raise ChatTemplateError(f"the chat template computes too large a power ({left} ** {right})")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and _number(n) and len(seq) * n > MAX_REPEAT:
                        raise ChatTemplateError(f"the chat template repeats a value to more than {MAX_REPEAT} "
                                                "items or characters")
            if operator == "%" and isinstance(left, str):
                _check_percent(left)
                for n in (right if isinstance(right, tuple) else (right,)):
                    if "*" in left:
                        _too_wide("a % field", n)
            return super().call_binop(context, operator, left, right)

        def call(self, __context, __obj, *args, **kwargs):
            target = getattr(__obj, "__wrapped__", __obj)      # the sandbox wraps str.format
            name = getattr(target, "__name__", None)
            if isinstance(getattr(target, "__self__", None), str):
                if name in _WIDTH_METHODS:
                    for a in list(args) + list(kwargs.values()):
                        _too_wide(f"str.{name}", a)
                elif name in ("format", "format_map"):
                    _check_str_format(target.__self__)
                    if ":{" in target.__self__:           # a width given as an argument
                        for a in list(args) + list(kwargs.values()):
                            _too_wide("a format field", a)
            return super().call(__context, __obj, *args, **kwargs)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, Generation],
                  undefined=jinja2.Undefined)
    env.filters["tojson"] = _tojson
    for name in _SIZED_FILTERS:
        env.filters[name] = _checked_filter(name, env.filters[name])
    plain_format = env.filters["format"]
    env.filters["format"] = functools.wraps(plain_format)(
        lambda value, *a, **k: (_check_percent(value), plain_format(value, *a, **k))[1])
    plain_lipsum = env.globals["lipsum"]

    def lipsum(n=5, html=True, min=20, max=100):
        _too_wide("lipsum", n * max * 10)          # paragraphs x words x characters, about
        return plain_lipsum(n=n, html=html, min=min, max=max)

    env.globals["lipsum"] = lipsum
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=32)
def _compile(template: str):
    import jinja2
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"the chat template is not valid Jinja (line {e.lineno}): {e.message}") from None

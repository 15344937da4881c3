"""Tokenizer metadata a model file may hold, checked when a ``Model`` loads (the tokenizer's
counterpart of ``llamadiff.hparams``).

llama.cpp loads a vocabulary whose metadata is wrong and quietly makes the best of it: a
special-token id outside the vocabulary becomes a default token (for a byte-level BPE vocab
the BOS becomes token 11, ``,``: a model then answers ``135779`` instead of ``13579``), a
``tokenizer.ggml.model`` that does not match the vocabulary tokenizes with the wrong
algorithm (``bert`` on a BPE vocabulary also makes token 103 the mask), a BPE vocabulary
without its merges splits every word into bytes, unknown token types and a vocabulary of
control tokens or empty strings tokenize into nothing a model was trained on. Every such case
only logs, then generates garbage. The rules below refuse them at load, with the key named:

- every ``tokenizer.ggml.*_token_id`` names a token of the vocabulary;
- a ``gpt2`` (byte-level BPE) vocabulary has merges, and most of them (half at least) join two
  tokens of the vocabulary into a third;
- a ``bert`` (WordPiece) or ``t5`` (Unigram) vocabulary has no BPE merges (they mark a BPE
  vocabulary under the wrong tokenizer);
- token types are llama.cpp's (1 normal ... 6 byte), and at least half the tokens are normal,
  user-defined or byte tokens (what text tokenizes into);
- at most one token is the empty string.

``tests/test_bad_input.py`` and the value fuzz (``tests/fuzz_values.py``) check each rule on
the test architectures and the shipped models.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from llamadiff.errors import ModelLoadError

__all__ = ["check", "problems"]

TOKEN_TYPES = range(0, 7)       # undefined, normal, unknown, control, user-defined, unused, byte
TEXT_TYPES = (1, 4, 6)          # normal, user-defined, byte: what text tokenizes into
MIN_GOOD_MERGES = 0.5           # the share of merges that must join two tokens into a third
_ID_KEY = re.compile(r"^tokenizer\.ggml\.[a-z_]+_token_id$")


def check(path: str, meta: Mapping[str, Any], read_strings: Callable) -> None:
    """Raise ModelLoadError naming every tokenizer value of ``path`` llama.cpp would silently
    replace or misuse. ``meta``: ``read_gguf_header``'s metadata (string arrays as counts);
    ``read_strings``: ``read_gguf_strings`` (the native core hands it over: this module sits
    below it)."""
    found = problems(path, meta, read_strings)
    if found:
        raise ModelLoadError(f"{path!r} holds tokenizer metadata its vocabulary cannot serve (a corrupt or "
                             "mis-converted file): " + "; ".join(found))


def problems(path: str, meta: Mapping[str, Any], read_strings: Callable) -> list:
    n_tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(n_tokens, int) or isinstance(n_tokens, bool) or n_tokens < 1:
        return []                   # no vocabulary: the loader's own check says so
    found = []
    for key in sorted(k for k in meta if _ID_KEY.match(k)):
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_tokens:
            found.append(f"{key} = {value!r} is not a token of the vocabulary (0..{n_tokens - 1}); llama.cpp "
                         "would use another token in its place")
    types = meta.get("tokenizer.ggml.token_type")
    if isinstance(types, list) and types:
        bad = next((i for i, t in enumerate(types) if t not in TOKEN_TYPES), None)
        if bad is not None:
            found.append(f"tokenizer.ggml.token_type holds {types[bad]!r} (token {bad}), which is no token type "
                         "(0..6: undefined, normal, unknown, control, user-defined, unused, byte)")
        else:
            text = sum(1 for t in types if t in TEXT_TYPES)
            if text * 2 < len(types):
                found.append(f"tokenizer.ggml.token_type makes only {text} of {len(types)} tokens normal, "
                             "user-defined or byte tokens (the rest control, unused or unknown): text would "
                             "tokenize into tokens the model never saw")
    model = meta.get("tokenizer.ggml.model")
    n_merges = meta.get("tokenizer.ggml.merges", 0)
    n_merges = n_merges if isinstance(n_merges, int) and not isinstance(n_merges, bool) else 0
    if model in ("bert", "t5") and n_merges > 0:
        kind = "WordPiece" if model == "bert" else "Unigram"
        found.append(f"tokenizer.ggml.model is {model!r} ({kind}), but the file has {n_merges} BPE merges: a "
                     "byte-level BPE vocabulary (tokenizer.ggml.model 'gpt2') under the wrong tokenizer")
    want = ["tokenizer.ggml.tokens"] + (["tokenizer.ggml.merges"] if model == "gpt2" else [])
    strings = read_strings(path, want)
    tokens = strings.get("tokenizer.ggml.tokens", [])
    empty = sum(1 for t in tokens if t == "")
    if empty > 1:
        found.append(f"{empty} of the {len(tokens)} tokens of tokenizer.ggml.tokens are empty strings")
    if model == "gpt2":
        merges = strings.get("tokenizer.ggml.merges", [])
        if not merges:
            found.append("tokenizer.ggml.model is 'gpt2' (byte-level BPE), but tokenizer.ggml.merges is missing "
                         "or empty: every word would be split into single bytes")
        else:
            vocab = set(tokens)
            good = 0
            for merge in merges:
                pos = merge.find(" ", 1)
                if pos > 0:
                    a, b = merge[:pos], merge[pos + 1:]
                    good += bool(b) and a in vocab and b in vocab and a + b in vocab
            if good < MIN_GOOD_MERGES * len(merges):
                found.append(f"only {good} of the {len(merges)} entries of tokenizer.ggml.merges join two tokens "
                             "of the vocabulary into a third ('a b' -> 'ab'): the merges are not this vocabulary's")
    return found

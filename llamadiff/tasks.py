"""Verifiable prompt/answer tasks for training and evaluating the tiny default models.

Every example is ``(prompt, answer)`` text; the answer is checked by exact match. Five tasks,
short enough for a ~1M-parameter model to learn on a CPU in minutes:

- ``add``: ``"47+38="`` -> ``"85"`` (two-digit operands);
- ``sort``: ``"sort 3914="`` -> ``"1349"`` (four to six digits);
- ``rev``: ``"rev kfzq="`` -> ``"qzfk"`` (four to six letters);
- ``copy``: ``"copy m3k9="`` -> ``"m3k9"``;
- ``get``: ``"a1b7c4:b="`` -> ``"7"`` (key-value lookup).

Both models also answer as chat: their GGUFs' ``tokenizer.chat_template`` (``chat_template()``)
passes the latest user message on as the plain task text they were trained on.

The split is deterministic: an example belongs to the held-out set when a hash of its prompt
says so (one in eight), so training never sees a held-out prompt whatever the seed.
"""

from __future__ import annotations

import random
import zlib

TASKS = ("add", "sort", "rev", "copy", "get")

# what the tiny shipped models know, at the sizes they were trained on (``make`` below); other
# sizes and other text give noise: "2+2=" (one-digit operands) an empty answer, "sort 321="
# (three digits) a wrong one
KNOWN = ("sums of two two-digit numbers (47+38=), sorting 4 to 6 digits (sort 93715=), reversing 4 to 6 "
         "letters (rev python=), copying 3 to 6 letters or digits (copy k9x2=), and lookups among three "
         "key-digit pairs of the letters a-h (a1b7c4:b=)")


def chat_template(bos: bool) -> str:
    """The tiny models' chat template (their GGUFs' ``tokenizer.chat_template``): the latest
    user message as the bare task text -- the plain prompt they were trained on, so a chat turn
    of ordinary text gets the same tokens, and the same answer, as that prompt (as everywhere
    in chat, text that spells a special token becomes that token). Earlier turns, system
    messages and answers are left out: the models answer one task at a time; a conversation
    without a user message is refused. ``bos``: the model's plain prompts start with its BOS
    token (the llada body adds one; the qwen3 body does not), and the chat text must start the
    same way."""
    return ("{#- llamadiff's tiny models answer one task at a time: only the latest user message "
            "reaches them, as the bare task they were trained on -#}\n"
            "{%- if not (messages | selectattr('role', 'equalto', 'user') | list) -%}\n"
            "{{- raise_exception('these tiny models answer a user message: there is none') -}}\n"
            "{%- endif -%}\n"
            + ("{{- bos_token -}}\n" if bos else "")
            + "{%- for message in messages if message['role'] == 'user' -%}\n"
              "{%- if loop.last %}{{ message['content'] }}{% endif -%}\n"
              "{%- endfor -%}\n")


LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"


def make(task: str, rng: random.Random) -> tuple[str, str]:
    if task == "add":
        a, b = rng.randrange(10, 100), rng.randrange(10, 100)
        return f"{a}+{b}=", str(a + b)
    if task == "sort":
        s = "".join(rng.choice(DIGITS) for _ in range(rng.randint(4, 6)))
        return f"sort {s}=", "".join(sorted(s))
    if task == "rev":
        s = "".join(rng.choice(LETTERS) for _ in range(rng.randint(4, 6)))
        return f"rev {s}=", s[::-1]
    if task == "copy":
        s = "".join(rng.choice(LETTERS + DIGITS) for _ in range(rng.randint(3, 6)))
        return f"copy {s}=", s
    if task == "get":
        keys = rng.sample(LETTERS[:8], 3)
        vals = [rng.choice(DIGITS) for _ in keys]
        q = rng.randrange(3)
        return "".join(k + v for k, v in zip(keys, vals)) + f":{keys[q]}=", vals[q]
    raise ValueError(f"unknown task {task!r}")


def held_out(prompt: str) -> bool:
    return zlib.crc32(prompt.encode()) % 8 == 0


def examples(n: int, *, split: str, seed: int, tasks=TASKS) -> list:
    """``n`` examples of the ``"train"`` or ``"test"`` split, tasks in rotation."""
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        prompt, answer = make(tasks[len(out) % len(tasks)], rng)
        if held_out(prompt) == (split == "test"):
            out.append((prompt, answer))
    return out

"""Multi-turn chat with the model's chat template: the history is kept between turns.

    python examples/chat.py [model.gguf]

With a model path and a terminal, it is interactive (Ctrl-D to leave); otherwise it plays
two scripted turns. For a full chat UI, see `llamadiff chat -m model.gguf`.
"""

import sys
import tempfile
from pathlib import Path

from llamadiff import Generator, testing


def turns(interactive):
    if not interactive:
        yield from ["What is 2 + 2?", "And times 3?"]
        return
    while True:
        try:
            yield input("you> ")
        except EOFError:
            return


def main(argv):
    path = argv[1] if len(argv) > 1 else testing.write_qwen3(Path(tempfile.mkdtemp()) / "tiny.gguf")
    interactive = len(argv) > 1 and sys.stdin.isatty()
    history = [{"role": "system", "content": "You are a concise assistant."}]
    with Generator(path, n_ctx=2048) as gen:
        for text in turns(interactive):
            history.append({"role": "user", "content": text})
            out = gen.generate(history, max_new_tokens=32, block_length=4)
            history.append({"role": "assistant", "content": out.text})
            print(f"you> {text}" if not interactive else "", end="\n" if not interactive else "")
            print(f"model> {out.text!r}  [{out.stop_reason}, prompt {len(out.prompt_tokens)} tokens]")


if __name__ == "__main__":
    main(sys.argv)

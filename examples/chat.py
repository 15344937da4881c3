"""Multi-turn chat through the model's chat template; the history is kept between turns.

    python examples/chat.py [model.gguf]

Without a path it chats with the tiny block model shipped with llamadiff: its chat template
passes the latest user message on as the bare task it was trained on. With
a path and a terminal it is interactive (Ctrl-D to leave); otherwise it plays scripted turns.
For a full chat UI, see `llamadiff chat -m model.gguf`.
"""

import sys

from llamadiff import Generator

SCRIPT = ["47+38=", "sort 93715=", "rev python="]


def turns(interactive):
    if not interactive:
        yield from SCRIPT
        return
    while True:
        try:
            yield input("you> ")
        except EOFError:
            return


def main(argv):
    path = argv[1] if len(argv) > 1 else None          # None: the shipped block model
    interactive = len(argv) > 1 and sys.stdin.isatty()
    history = [{"role": "system", "content": "You are a concise assistant."}]
    with Generator(path, n_ctx=2048) as gen:
        print("the prompt of the first turn:", repr(gen.model.apply_chat_template(history + [
            {"role": "user", "content": SCRIPT[0]}], template=gen.chat_template)))
        for text in turns(interactive):
            history.append({"role": "user", "content": text})
            out = gen.generate(history, max_new_tokens=32)
            history.append({"role": "assistant", "content": out.text})
            if not interactive:
                print(f"you> {text}")
            print(f"model> {out.text}  [{out.stop_reason}, prompt {len(out.prompt_tokens)} tokens]")


if __name__ == "__main__":
    main(sys.argv)

"""Stream a block-diffusion generation: one chunk per finished block, plus a live step count.

    python examples/streaming.py [model.gguf] [prompt]

Without a model path it uses the tiny model shipped with llamadiff, which knows five small
tasks (sums, sorting, reversing, copying, lookups): the default prompt is one of them.
"""

import sys

from llamadiff import Generator, default_model


def main(argv):
    path = argv[1] if len(argv) > 1 else default_model()
    prompt = argv[2] if len(argv) > 2 else "rev python="
    steps = []
    with Generator(path, n_ctx=1024) as gen:
        for chunk in gen.stream(prompt, max_new_tokens=24, block_length=4,
                                strategy="low_confidence_dynamic", threshold=0.9,
                                callback=lambda info: steps.append(info.step)):
            if chunk.tokens:        # the last block may hold only the end-of-generation token
                print(f"[block {chunk.block_index}, {len(chunk.tokens)} tokens] {chunk.text!r}", flush=True)
            if chunk.stop_reason:
                print(f"stop: {chunk.stop_reason}; {len(steps)} denoising steps in all")


if __name__ == "__main__":
    main(sys.argv)

"""Generate text with a block-diffusion model, and show what the denoising loop did.

    python examples/quickstart.py [model.gguf] [prompt]

Without a model path, a tiny random-weight block-diffusion model (qwen3 body with a
<|MASK|> token) is written to a temporary directory first, so this runs anywhere -- its
text is gibberish, but every step of the loop is real.
"""

import sys
import tempfile
from pathlib import Path

from llamadiff import Generator, testing


def main(argv):
    if len(argv) > 1:
        path = Path(argv[1])
    else:
        path = testing.write_qwen3(Path(tempfile.mkdtemp()) / "tiny-qwen3.gguf", seed=0)
        print(f"no model given: wrote a tiny random-weight test model to {path}")
    prompt = argv[2] if len(argv) > 2 else "The sum of 12 and 30 is"

    with Generator(path, n_ctx=1024) as gen:
        model = gen.model
        print(f"architecture: {model.architecture}   family: {model.family}   vocab: {model.n_vocab}   "
              f"params: {model.n_params:,}   mask token: {model.token_to_piece(model.mask_token_id)!r}")
        out = gen.generate(prompt, max_new_tokens=32, block_length=4, steps=4,
                           strategy="low_confidence_dynamic", threshold=0.85)
        print(f"prompt: {prompt!r}")
        print(f"output: {out.text!r}  ({len(out.tokens)} tokens, stop: {out.stop_reason})")
        s = out.stats
        print(f"{s['decode_calls']} decodes, {s['tokens_per_step']:.2f} tokens committed per step, "
              f"{s['tokens_per_second']:.0f} tok/s (decode {s['decode_ms']:.1f} ms, "
              f"sampling {s['sampling_ms']:.1f} ms)")
        print("streaming, one chunk per finished block:")
        for chunk in gen.stream(prompt, max_new_tokens=12, block_length=4):
            print(f"  block {chunk.block_index}: {chunk.tokens} {chunk.text!r}")


if __name__ == "__main__":
    main(sys.argv)

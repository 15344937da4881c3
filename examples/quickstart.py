"""Generate with a block-diffusion model, and show what the denoising loop did.

    python examples/quickstart.py [model.gguf] [prompt]

Without a model path it uses the tiny block-diffusion model shipped with llamadiff
(``llamadiff.default_model()``), trained on small checkable tasks -- sums, sorting,
reversing, copying, lookups -- so the answers can be checked by eye.
"""

import sys

from llamadiff import Generator, default_model

PROMPTS = ["47+38=", "sort 93715=", "rev python=", "copy k9x2=", "a1b7c4:b="]


def main(argv):
    path = argv[1] if len(argv) > 1 else default_model()
    prompts = [argv[2]] if len(argv) > 2 else PROMPTS

    with Generator(path, n_ctx=1024) as gen:
        model = gen.model
        print(f"model: {path}")
        print(f"architecture: {model.architecture}   family: {model.family}   vocab: {model.n_vocab}   "
              f"params: {model.n_params:,}   block length: {gen.default_block_length}")
        for prompt in prompts:
            out = gen.generate(prompt, max_new_tokens=32, strategy="low_confidence_dynamic", threshold=0.9)
            s = out.stats
            n = len(out.tokens)
            print(f"{prompt!r:>16} -> {out.text!r:<10} ({n} token{'s' if n != 1 else ''}, stop: {out.stop_reason}, "
                  f"{s['decode_calls']} decodes, {s['tokens_per_step']:.2f} tokens per step)")
        print("streaming, one chunk per finished block:")
        for chunk in gen.stream(prompts[0], max_new_tokens=12):
            if chunk.tokens:
                print(f"  block {chunk.block_index}: {chunk.tokens} {chunk.text!r}")
            if chunk.stop_reason:        # the last block may hold only the end-of-generation token
                print(f"  stop: {chunk.stop_reason}")


if __name__ == "__main__":
    main(sys.argv)

"""Load a GGUF model, describe it, and show what it predicts for a prompt.

    python examples/quickstart.py [model.gguf] [prompt]

Without a model path, a tiny random-weight block-diffusion model (qwen3 body with a
<|MASK|> token) is written to a temporary directory first, so this runs anywhere.
"""

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llamadiff import Context, Model, testing


def main(argv):
    if len(argv) > 1:
        path = Path(argv[1])
    else:
        path = testing.write_qwen3(Path(tempfile.mkdtemp()) / "tiny-qwen3.gguf", seed=0)
        print(f"no model given: wrote a tiny random-weight test model to {path}")
    prompt = argv[2] if len(argv) > 2 else "The sum of 12 and 30 is"

    model = Model(path)
    print(f"architecture: {model.architecture}   family: {model.family}   "
          f"vocab: {model.n_vocab}   params: {model.n_params:,}   type: {model.file_type}")
    if model.mask_token_id is not None:
        print(f"mask token: {model.mask_token_id} {model.token_to_piece(model.mask_token_id)!r}")

    ids = model.tokenize(prompt)
    with Context(model, n_ctx=512, causal=model.family is None) as ctx:
        if model.mask_token_id is not None:
            ids = ids + [model.mask_token_id] * 4     # ask the model to fill 4 masks at once
        start = time.perf_counter()
        ctx.decode(ids)
        elapsed = (time.perf_counter() - start) * 1e3
        logits = ctx.logits                          # zero-copy view of llama.cpp's buffer
        print(f"decoded {len(ids)} tokens in {elapsed:.1f} ms")
        for row in range(max(0, len(ids) - 4), len(ids)):
            top = np.argsort(logits[row])[::-1][:3]
            shown = ", ".join(f"{model.token_to_piece(int(t))!r}" for t in top)
            print(f"  position {row:3d} ({model.token_to_piece(ids[row])!r}): top-3 {shown}")


if __name__ == "__main__":
    main(sys.argv)

"""Build the Cython policy in this directory (if needed) and generate with it.

    python examples/custom_remasking/run.py [model.gguf]
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build():
    import importlib.util
    if importlib.util.find_spec("Cython") is None:
        sys.exit("this example compiles a Cython extension: install Cython first "
                 "(pip install \"llamadiff[cython]\", or pip install Cython setuptools)")
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=HERE, check=True)
    sys.path.insert(0, str(HERE))


def main(argv):
    try:
        import right_to_left  # noqa: F401
    except ImportError:
        build()
    from right_to_left import ReviseOne, RightToLeft

    from llamadiff import Generator, testing

    path = argv[1] if len(argv) > 1 else testing.write_qwen3(Path(tempfile.mkdtemp()) / "tiny.gguf")
    with Generator(path, n_ctx=512) as gen:
        order = []
        out = gen.generate("hello", max_new_tokens=8, block_length=4, steps=4, strategy=RightToLeft(),
                           callback=lambda info: order.append(info.positions), stop=[])
        print("commit order (absolute positions):", order)
        print("tokens:", out.tokens)
        # a policy that edits: a position written twice is an edit
        steps = []
        out = gen.generate("hello", max_new_tokens=8, block_length=4, steps=4, strategy=ReviseOne(),
                           callback=lambda info: steps.append(list(zip(info.positions, info.tokens))), stop=[])
        print("revise_one steps (position, token):", steps)
        print("revise_one edits:", out.stats["edits"], "tokens:", out.tokens)
    # the same policy drives full diffusion (LLaDA blocks of 8, one position per step)
    full = testing.write_model(Path(tempfile.mkdtemp()) / "llada.gguf", "llada")
    with Generator(full, n_ctx=512) as gen:
        order = []
        gen.generate("hello", max_new_tokens=8, block_length=8, steps=8, strategy=RightToLeft(),
                     callback=lambda info: order.append(info.positions), stop=[])
        print("full diffusion commit order:", order)


if __name__ == "__main__":
    main(sys.argv)

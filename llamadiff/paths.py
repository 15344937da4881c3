"""Where llamadiff's files are: the shipped models, the headers and libraries for Cython code
that ``cimport``s llamadiff. (Re-exported by the package root; modules below it import this.)"""

import os

__all__ = ["default_model", "get_include", "get_library_dir"]

_HERE = os.path.dirname(os.path.abspath(__file__))


def default_model(kind: str = "block") -> str:
    """Path of a tiny model shipped with llamadiff, trained by ``training/train.py`` on the
    tasks of ``llamadiff.tasks`` (sums, sorting, reversal, copying, lookup):
    ``"block"`` (qwen3 body, block diffusion, block length 4) or ``"full"`` (llada body)."""
    if kind not in ("block", "full"):
        raise ValueError("kind must be 'block' or 'full'")
    path = os.path.join(_HERE, "models", f"{kind}-tiny.gguf")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the default {kind} model is missing from this installation: {path}")
    return path


def get_include() -> list:
    """Include directories for Cython extensions that ``cimport llamadiff``.

    The directory holding the ``llamadiff`` package (for its ``.pxd`` files) and the
    llama.cpp / ggml headers shipped with it. Use as ``include_dirs=llamadiff.get_include()``
    in ``Extension(...)`` and ``cythonize(..., include_path=llamadiff.get_include())``.
    """
    return [os.path.dirname(_HERE), os.path.join(_HERE, "include")]


def get_library_dir() -> str:
    """Directory of the bundled libllama / libggml (to link C code against llama.cpp)."""
    return _HERE

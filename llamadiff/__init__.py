"""llamadiff: diffusion language models (SDAR, LLaDA, Dream) from GGUF files on llama.cpp.

The core objects:

- :class:`Model` -- a GGUF file loaded by llama.cpp (vocabulary, metadata, weights).
- :class:`Context` -- an inference context: KV memory, decode calls, zero-copy logits.
- :class:`Generator` -- diffusion generation: block diffusion (SDAR family) with an exact KV
  cache, and full diffusion (LLaDA, Dream) with optional prefix / dual caches.
"""

import os as _os

from llamadiff.errors import (LlamaDiffError, ModelLoadError, UnsupportedModelError,
                              ContextError, DecodeError, DecodeAborted, CudaError,
                              CudaUnavailableError, ChatTemplateError, GeneratorClosedError)
from llamadiff._core import (Model, Context, set_log_level, llama_cpp_version, system_info,
                             supports_gpu_offload, devices, quantize, MASK_TOKEN_TEXTS)
from llamadiff.policy import (RemaskPolicy, Sequential, LowConfidenceStatic, LowConfidenceDynamic,
                              EntropyBounded, Ranked, Confidence, LowEntropy, Margin, RandomOrder,
                              Origin, ParallelPolicy, ParallelThreshold, ParallelFactor)
from llamadiff.serving import Engine, Request, QueueFullError, EngineClosedError
from llamadiff.generator import (Generator, GenerationConfig, GenerationResult, StreamChunk,
                                 StepInfo)

__version__ = "0.1.0"

__all__ = [
    "Generator", "GenerationConfig", "GenerationResult", "StreamChunk", "StepInfo",
    "Engine", "Request", "QueueFullError", "EngineClosedError",
    "RemaskPolicy", "Sequential", "LowConfidenceStatic", "LowConfidenceDynamic", "EntropyBounded",
    "Ranked", "Confidence", "LowEntropy", "Margin", "RandomOrder", "Origin", "ParallelPolicy",
    "ParallelThreshold", "ParallelFactor",
    "Model", "Context", "set_log_level", "llama_cpp_version", "system_info",
    "supports_gpu_offload", "devices", "quantize", "get_include", "get_library_dir", "MASK_TOKEN_TEXTS", "LlamaDiffError", "ModelLoadError",
    "UnsupportedModelError", "ContextError", "DecodeError", "DecodeAborted", "CudaError",
    "CudaUnavailableError", "ChatTemplateError", "GeneratorClosedError",
]


def default_model(kind: str = "block") -> str:
    """Path of a tiny model shipped with llamadiff, trained by ``training/train.py`` on the
    tasks of ``llamadiff.tasks`` (sums, sorting, reversal, copying, lookup):
    ``"block"`` (qwen3 body, block diffusion, block length 4) or ``"full"`` (llada body)."""
    if kind not in ("block", "full"):
        raise ValueError("kind must be 'block' or 'full'")
    path = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "models", f"{kind}-tiny.gguf")
    if not _os.path.isfile(path):
        raise FileNotFoundError(f"the default {kind} model is missing from this installation: {path}")
    return path


def get_include():
    """Include directories for Cython extensions that ``cimport llamadiff``.

    The directory holding the ``llamadiff`` package (for its ``.pxd`` files) and the
    llama.cpp / ggml headers shipped with it. Use as ``include_dirs=llamadiff.get_include()``
    in ``Extension(...)`` and ``cythonize(..., include_path=llamadiff.get_include())``.
    """
    here = _os.path.dirname(_os.path.abspath(__file__))
    return [_os.path.dirname(here), _os.path.join(here, "include")]


def get_library_dir():
    """Directory of the bundled libllama / libggml (to link C code against llama.cpp)."""
    return _os.path.dirname(_os.path.abspath(__file__))

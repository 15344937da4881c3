"""llamadiff: diffusion language models (SDAR, LLaDA, Dream) from GGUF files on llama.cpp.

The core objects:

- :class:`Model` -- a GGUF file loaded by llama.cpp (vocabulary, metadata, weights).
- :class:`Context` -- an inference context: KV memory, decode calls, zero-copy logits.
- :class:`Generator` -- block-diffusion generation (SDAR family) with an exact KV cache.
"""

import os as _os

from llamadiff.errors import (LlamaDiffError, ModelLoadError, UnsupportedModelError,
                              ContextError, DecodeError, DecodeAborted)
from llamadiff._core import (Model, Context, set_log_level, llama_cpp_version, system_info,
                             supports_gpu_offload, MASK_TOKEN_TEXTS)
from llamadiff._remask import (RemaskPolicy, Sequential, LowConfidenceStatic,
                               LowConfidenceDynamic, EntropyBounded)
from llamadiff.generator import (Generator, GenerationConfig, GenerationResult, StreamChunk,
                                 StepInfo)

__version__ = "0.1.0"

__all__ = [
    "Generator", "GenerationConfig", "GenerationResult", "StreamChunk", "StepInfo",
    "RemaskPolicy", "Sequential", "LowConfidenceStatic", "LowConfidenceDynamic", "EntropyBounded",
    "Model", "Context", "set_log_level", "llama_cpp_version", "system_info",
    "supports_gpu_offload", "get_include", "LlamaDiffError", "ModelLoadError",
    "UnsupportedModelError", "ContextError", "DecodeError", "DecodeAborted",
]


def get_include():
    """Directories to add to include paths when building Cython code that cimports llamadiff.

    The package's own directory parent (for ``cimport llamadiff.llama`` / ``llamadiff._core``).
    """
    return [_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))]

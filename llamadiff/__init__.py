"""llamadiff: diffusion language models (SDAR, LLaDA, Dream) from GGUF files on llama.cpp.

The core objects:

- :class:`Model` -- a GGUF file loaded by llama.cpp (vocabulary, metadata, weights).
- :class:`Context` -- an inference context: KV memory, decode calls, zero-copy logits.
- :class:`Generator` -- diffusion generation: block diffusion (SDAR family) with an exact KV
  cache, and full diffusion (LLaDA, Dream) with optional prefix / dual caches.
- :class:`Batcher` -- serving: requests from many threads join one running batch.
"""

from llamadiff.errors import (LlamaDiffError, ModelLoadError, UnsupportedModelError,
                              ContextError, DecodeError, DecodeAborted, CudaError,
                              CudaUnavailableError, ChatTemplateError, GeneratorClosedError,
                              ModelDefaultWarning, TrainedLengthWarning)
from llamadiff._core import (Model, Context, set_log_level, llama_cpp_version, system_info,
                             supports_gpu_offload, devices, quantize, MASK_TOKEN_TEXTS)
from llamadiff.paths import default_model, get_include, get_library_dir
from llamadiff.policy import (RemaskPolicy, Sequential, LowConfidenceStatic, LowConfidenceDynamic,
                              EntropyBounded, Ranked, Confidence, LowEntropy, Margin, RandomOrder,
                              Origin, ParallelPolicy, ParallelThreshold, ParallelFactor, TokenEditing)
from llamadiff.serving import (Batcher, Request, QueueFullError, BatcherClosedError,
                               Engine, EngineClosedError)
from llamadiff.generator import (Generator, GenerationConfig, GenerationResult, StreamChunk,
                                 StepInfo)

__version__ = "0.1.0"

__all__ = [
    "Generator", "GenerationConfig", "GenerationResult", "StreamChunk", "StepInfo",
    "Batcher", "Request", "QueueFullError", "BatcherClosedError", "Engine", "EngineClosedError",
    "RemaskPolicy", "Sequential", "LowConfidenceStatic", "LowConfidenceDynamic", "EntropyBounded",
    "Ranked", "Confidence", "LowEntropy", "Margin", "RandomOrder", "Origin", "ParallelPolicy",
    "ParallelThreshold", "ParallelFactor", "TokenEditing",
    "Model", "Context", "set_log_level", "llama_cpp_version", "system_info",
    "supports_gpu_offload", "devices", "quantize", "default_model", "get_include", "get_library_dir",
    "MASK_TOKEN_TEXTS", "LlamaDiffError", "ModelLoadError",
    "UnsupportedModelError", "ContextError", "DecodeError", "DecodeAborted", "CudaError",
    "CudaUnavailableError", "ChatTemplateError", "GeneratorClosedError", "ModelDefaultWarning",
    "TrainedLengthWarning",
]

"""Exceptions raised by llamadiff.

Every error that bad input can cause is one of these (or a built-in such as
``FileNotFoundError`` / ``ValueError`` where Python has a natural one), never a crash.
They subclass the built-in that fits, so ``except ValueError`` keeps working.
"""


class LlamaDiffError(Exception):
    """Base class of llamadiff's own errors."""


class ModelLoadError(LlamaDiffError, ValueError):
    """A file could not be loaded as a model (not GGUF, truncated, unknown architecture...)."""


class UnsupportedModelError(LlamaDiffError, ValueError):
    """The model loaded, but llamadiff cannot run it for the requested task."""


class ChatTemplateError(LlamaDiffError, ValueError):
    """A chat template could not format the messages: not valid Jinja, or it failed or
    refused them while rendering."""


class ContextError(LlamaDiffError, RuntimeError):
    """llama.cpp could not create a context with the requested settings."""


class DecodeError(LlamaDiffError, RuntimeError):
    """llama_decode failed (context full, invalid batch, backend error)."""


class DecodeAborted(DecodeError):
    """llama_decode stopped early because an abort was requested."""


class CudaError(LlamaDiffError, RuntimeError):
    """A CUDA call of llamadiff's GPU sampler failed (no device, out of memory, a kernel error)."""


class CudaUnavailableError(CudaError):
    """CUDA was asked for, but this installation or machine cannot provide it (built without
    CUDA, no driver, no device)."""


class GeneratorClosedError(LlamaDiffError, RuntimeError):
    """The Generator was closed: a call made afterwards, or one that was running (or a
    ``stream()`` being iterated) in another thread when ``close()`` was called."""


class ModelDefaultWarning(UserWarning):
    """A default the model's GGUF gives (``diffusion.*``) that this Generator cannot use -- a
    block length its context cannot hold -- is left out, and the built-in default applies."""


class TrainedLengthWarning(UserWarning):
    """A generation longer than the model was trained on (its context length, or for a
    full-diffusion model the sequence length it learned to denoise): it runs, but the output is
    likely noise."""

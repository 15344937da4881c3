"""Which bodies qualify for which diffusion family: ``Model`` reports facts about a model (its
architecture, memory kind, attention window, RoPE kind, mask token), these rules decide what
the facts allow. ``Model.family`` and ``Model.block_diffusion_problem`` answer from here, and
``llamadiff.families`` re-exports them.

A leaf module (it imports nothing of llamadiff but its errors), so that the native core can
consult it without importing the families above it.
"""

from __future__ import annotations

from typing import Optional

from llamadiff.errors import UnsupportedModelError

__all__ = ["NO_MEMORY_ARCHS", "OWN_CACHE_ARCHS", "TIMESTEP_ARCHS", "FULL_DIFFUSION_ARCHS",
           "block_diffusion_problem", "family_of", "check_runnable"]

# Bodies that llama.cpp's llama_model::create_memory (src/llama-model.cpp) gives no memory
# (encoders) or a cache of its own kind (sparse-attention indexers, compressed or
# sliding-window layers) instead of the plain llama_kv_cache that block-causal attention
# (vendor/patches/0003) works through. tests/test_bodies.py checks this list against the
# switch of the pinned source, so a llama.cpp update that adds one fails there.
NO_MEMORY_ARCHS = frozenset({"bert", "modern-bert", "nomic-bert", "nomic-bert-moe", "neo-bert",
                             "jina-bert-v2", "jina-bert-v3", "eurobert", "gemma-embedding",
                             "wavtokenizer-dec"})
OWN_CACHE_ARCHS = frozenset({"minimax-m3", "glm-dsa", "deepseek32", "glm5-next", "hy_v4",
                             "dots3note", "deepseek4", "dflash"})

# canvas diffusion (DiffusionGemma: the Gemma 4 body in two phases, vendor/patches/0012)
CANVAS_ARCH = "diffusion-gemma"

# full-diffusion architectures trained with Dream's timestep schedule (the others: LLaDA's blocks)
TIMESTEP_ARCHS = ("dream", "rnd1")
# named in messages (llama.cpp's llama_model_is_diffusion decides)
FULL_DIFFUSION_ARCHS = ("llada", "llada-moe", "dream", "rnd1")

# RoPE kinds with several position coordinates per token
_MULTI_AXIS_ROPE = ("mrope", "imrope", "vision")


def block_diffusion_problem(model) -> Optional[str]:
    """Why block diffusion cannot run on this model's body (a phrase), or None when it can.

    Block diffusion re-decodes each block's positions step after step, with block-causal
    attention applied through llama.cpp's standard KV cache (vendor/patches/0003); any causal
    body whose attention lives in that cache qualifies (qwen3, qwen3moe, qwen2, llama,
    bailingmoe2 are tested against a NumPy reference). Refused, because that does not hold for
    them: recurrent or hybrid memory (a running state cannot take a step back), sliding-window
    attention and the bodies llama.cpp gives a cache of their own kind (the block-causal mask
    does not reach those caches), encoders and encoder-decoder bodies, and multi-axis RoPE
    (positions with several coordinates per token)."""
    arch = model.architecture
    if model.is_diffusion:
        return ("it is a full-diffusion architecture (bidirectional attention over the whole "
                "sequence), which runs as full diffusion")
    if model.has_encoder:
        return "it is an encoder-decoder model; block diffusion needs a decoder-only body"
    if arch in NO_MEMORY_ARCHS or model.meta(f"{arch}.attention.causal") == "false":
        return ("it is an encoder (bidirectional, no KV cache); block diffusion needs a causal "
                "decoder body")
    if arch in OWN_CACHE_ARCHS:
        return ("llama.cpp keeps its attention in a cache of its own kind (sparse-attention "
                "indexer or compressed layers) that block-causal attention does not reach")
    if model.is_recurrent:
        return ("its layers are recurrent (a running state, not a KV cache): a denoising step "
                "cannot be taken back and re-decoded")
    if model.is_hybrid:
        return ("it has recurrent layers beside attention (hybrid memory): their running state "
                "cannot take a denoising step back")
    if model.n_swa > 0:
        return ("it uses sliding-window attention, which llama.cpp keeps in a separate cache "
                "that block-causal attention does not reach")
    if model.rope_type in _MULTI_AXIS_ROPE:
        return "it uses multi-axis RoPE (several position coordinates per token)"
    return None


def family_of(model) -> Optional[str]:
    """``"full"`` for llama.cpp's diffusion architectures, ``"block"`` for causal bodies with a
    mask token that block diffusion can run on (SDAR-style; ``block_diffusion_problem``),
    ``None`` for other models."""
    if model.is_diffusion:
        return "full"
    if model.architecture == CANVAS_ARCH:
        return "canvas"     # uniform-noise canvases, no mask token (DiffusionGemma)
    if model.mask_token_id is not None and block_diffusion_problem(model) is None:
        return "block"
    return None


def check_runnable(model) -> str:
    """The family of a model some generation can run on; UnsupportedModelError naming why not."""
    family = family_of(model)
    if family is None:
        problem = block_diffusion_problem(model)
        if problem is not None and model.mask_token_id is not None:
            raise UnsupportedModelError(f"block diffusion cannot run on this model ({model.architecture}): {problem}")
        raise UnsupportedModelError(
            f"this model ({model.architecture}) is not a diffusion model: block diffusion needs a "
            "causal-architecture model with a mask token (SDAR-style), full diffusion a diffusion "
            f"architecture ({', '.join(FULL_DIFFUSION_ARCHS)}) with a mask token")
    mask = model.mask_token_id
    if family == "canvas":
        return family
    if family == "full" and mask is None:
        raise UnsupportedModelError(
            f"this {model.architecture} model has no mask token (tokenizer.ggml.mask_token_id): "
            "full diffusion cannot run without one")
    if mask is not None and mask in model.eog_token_ids:
        # the mask token is never predicted, so an end-of-generation token equal to it could
        # never be generated: every run would go on to max_new_tokens
        raise UnsupportedModelError(
            f"the mask token ({mask}, {model.token_to_piece(mask, special=True)!r}) is also an "
            "end-of-generation token of this model: generation could never stop. The GGUF's "
            "tokenizer.ggml.mask_token_id or its eos/eot token ids are wrong")
    return family

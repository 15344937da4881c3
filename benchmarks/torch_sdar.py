"""The official algorithm as PyTorch users run it: SDAR's block-diffusion loop with a KV cache,
on Hugging Face ``transformers``' ``Qwen3ForCausalLM`` with a block-causal 4-D mask.

This follows SDAR's ``generate.py``: the full prompt blocks are prefilled with the
block-causal mask and stored; every denoising step runs the active block against the cache
without storing it (the cache is cropped back); once a block has no mask left, one more
forward pass stores its KV ("store_kv"). Greedy or sampled x0, then the remasking
strategies with llamadiff's documented semantics (ties to the leftmost position), so greedy
runs give the same tokens as llamadiff on the same weights.

Used by the benchmark harness (``benchmarks/run.py``) and by the cross-implementation test.
Needs ``torch``, ``transformers`` and ``safetensors``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import DynamicCache, Qwen3Config, Qwen3ForCausalLM


def load_qwen3(checkpoint_dir, *, dtype=torch.float32, device="cpu") -> Qwen3ForCausalLM:
    """A Qwen3ForCausalLM from a llamadiff.testing checkpoint (config.json + model.safetensors)."""
    checkpoint_dir = Path(checkpoint_dir)
    cfg = json.loads((checkpoint_dir / "config.json").read_text())
    config = Qwen3Config(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"], num_key_value_heads=cfg["num_key_value_heads"],
        head_dim=cfg["head_dim"], max_position_embeddings=cfg["max_position_embeddings"],
        rms_norm_eps=cfg["rms_norm_eps"], rope_theta=cfg["rope_theta"],
        tie_word_embeddings=cfg["tie_word_embeddings"], attn_implementation="sdpa")
    model = Qwen3ForCausalLM(config)
    state = load_file(str(checkpoint_dir / "model.safetensors"))
    model.load_state_dict(state, strict=not cfg["tie_word_embeddings"])
    if cfg["tie_word_embeddings"]:
        model.tie_weights()
    return model.to(device=device, dtype=dtype).eval()


def block_causal_mask(n: int, block: int, device="cpu") -> torch.Tensor:
    """(1, 1, n, n) boolean: query i sees key j when j // block <= i // block."""
    idx = torch.arange(n, device=device) // block
    return (idx[None, :] <= idx[:, None])[None, None]


def _crop(cache: DynamicCache, keep: int) -> None:
    drop = cache.get_seq_length() - keep
    if drop > 0:
        cache.crop(-drop)


# the KV cache argument of a transformers forward: ``cache`` where the installed transformers
# takes it (it deprecates past_key_values), ``past_key_values`` in the releases before
_CACHE_ARG = "cache" if "cache" in inspect.signature(Qwen3ForCausalLM.forward).parameters else "past_key_values"


def _cache_kw(cache) -> dict:
    return {_CACHE_ARG: cache, "use_cache": True}


@torch.inference_mode()
def generate(model, prompt, max_new_tokens: int, block_length: int, steps: int, mask_id: int, *,
             strategy: str = "low_confidence_static", threshold: float = 0.85, eb_gamma: float = 0.35,
             temperature: float = 0.0, seed: int = 0) -> dict:
    """SDAR block diffusion with a KV cache. Returns tokens and forward-pass counts."""
    device = next(model.parameters()).device
    B = block_length
    n_prompt = len(prompt)
    n_blocks = -(-(n_prompt + max_new_tokens) // B)
    x = torch.full((n_blocks * B,), mask_id, dtype=torch.long, device=device)
    x[:n_prompt] = torch.tensor(prompt, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    cache = DynamicCache()
    forwards = 0
    first = n_prompt // B
    if first > 0:
        n = first * B
        model(input_ids=x[None, :n], attention_mask=block_causal_mask(n, B, device),
              **_cache_kw(cache))
        forwards += 1
    schedule = [B // steps + (1 if k < B % steps else 0) for k in range(steps)]
    for k in range(first, n_blocks):
        s = k * B
        pos = torch.arange(s, s + B, device=device)[None]
        visible = torch.ones(1, 1, B, s + B, dtype=torch.bool, device=device)
        for step in range(steps + 1):
            masked = (x[s:s + B] == mask_id).nonzero().flatten()
            if masked.numel() == 0:
                # store the clean block's KV (SDAR's store_kv pass)
                model(input_ids=x[None, s:s + B], position_ids=pos, attention_mask=visible,
                      **_cache_kw(cache))
                forwards += 1
                break
            logits = model(input_ids=x[None, s:s + B], position_ids=pos, attention_mask=visible,
                           **_cache_kw(cache)).logits[0].float()
            forwards += 1
            _crop(cache, s)
            logits = logits[masked]
            logits[:, mask_id] = float("-inf")
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                x0 = torch.multinomial(probs, 1, generator=gen).flatten()
            else:
                probs = torch.softmax(logits, dim=-1)
                x0 = probs.argmax(dim=-1)
            p = probs.gather(-1, x0[:, None]).flatten()
            n = min(max(schedule[step] if step < steps else len(masked), 1), len(masked))
            by_conf = torch.argsort(-p, stable=True)
            if step >= steps - 1:
                chosen = torch.arange(len(masked), device=device)
            elif strategy == "sequential":
                chosen = torch.arange(n, device=device)
            elif strategy == "low_confidence_static":
                chosen = by_conf[:n]
            elif strategy == "low_confidence_dynamic":
                high = (p > threshold).nonzero().flatten()
                chosen = high if len(high) >= n else by_conf[:n]
            elif strategy == "entropy_bounded":
                ent = -(probs * torch.log(probs.clamp_min(1e-30))).sum(-1)
                order = torch.argsort(ent, stable=True)
                keep = int((torch.cumsum(ent[order], 0) < eb_gamma).sum())
                chosen = order[:max(keep, 1)]
            else:
                raise ValueError(strategy)
            x[s + masked[chosen]] = x0[chosen]
    return {"tokens": x[n_prompt:n_prompt + max_new_tokens].tolist(), "forwards": forwards}

"""Tiny diffusion language models in PyTorch whose forward pass is llama.cpp's, for training.

``TinyLM(arch, shape)`` holds its weights under the GGUF tensor names and layouts that
``llamadiff.testing.write_model`` writes, so a trained model exports with
``write_model(path, arch, shape=shape, tensors=model.gguf_tensors())`` and llama.cpp computes
the same logits (``tests/test_training_model.py`` checks it). The forward pass follows
llama.cpp's graphs (src/models/{qwen3,llada}.cpp), as ``tests/numpy_reference.py`` does:

- qwen3 (the block-diffusion body): RMSNorm, per-head RMSNorm of q and k, NEOX RoPE,
  grouped-query attention, SwiGLU, tied or untied output;
- llada (the full-diffusion body): RMSNorm, NORM RoPE (consecutive pairs), no q/k norm.

Attention takes an explicit boolean matrix (query i may see key j), so the same module trains
with block-causal (SDAR) or full bidirectional (LLaDA) attention.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from llamadiff.testing import ModelShape, _tensor_plan, byte_vocab

ARCHS = ("qwen3", "llada")


def _key(name: str) -> str:
    return name.replace(".", "__")


class TinyLM(nn.Module):
    def __init__(self, arch: str, shape: ModelShape, seed: int = 0):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}")
        if shape.qkv_bias:
            raise ValueError("q/k/v biases are not supported here")
        self.arch = arch
        self.shape = shape
        self.n_vocab = len(byte_vocab(shape.n_vocab_pad).tokens)
        self.plan = _tensor_plan(arch, shape, self.n_vocab, False)
        gen = torch.Generator().manual_seed(seed)
        self.w = nn.ParameterDict()
        for t in self.plan:
            if t.kind == "norm":
                value = torch.ones(t.shape)
            else:
                value = torch.randn(t.shape, generator=gen) / math.sqrt(t.fan_in)
            self.w[_key(t.name)] = nn.Parameter(value)
        half = shape.head_dim // 2
        inv_freq = shape.rope_theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / shape.head_dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def p(self, name: str) -> torch.Tensor:
        return self.w[_key(name)]

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.shape.rms_eps) * weight

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x: (batch, seq, heads, head_dim); pos: (seq,) absolute positions."""
        ang = pos.float()[:, None] * self.inv_freq[None, :]            # (seq, half)
        cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]
        if self.arch == "qwen3":                                         # NEOX: (i, i + half)
            half = x.shape[-1] // 2
            a, b = x[..., :half], x[..., half:]
            return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
        a, b = x[..., 0::2], x[..., 1::2]                                # NORM: (2i, 2i + 1)
        return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)

    def forward(self, tokens: torch.Tensor, allowed: torch.Tensor, positions: torch.Tensor | None = None):
        """Logits (batch, seq, vocab). ``allowed``: bool (seq, seq) or (batch, seq, seq)."""
        s = self.shape
        bsz, n = tokens.shape
        pos = torch.arange(n) if positions is None else positions
        H, KV, D = s.n_head, s.n_head_kv, s.head_dim
        mask = allowed if allowed.dim() == 3 else allowed[None]
        mask = mask[:, None, :, :]                                       # (batch|1, 1, seq, seq)
        x = self.p("token_embd.weight")[tokens]
        for il in range(s.n_layer):
            pre = f"blk.{il}."
            h = self._rms(x, self.p(pre + "attn_norm.weight"))
            q = (h @ self.p(pre + "attn_q.weight").T).view(bsz, n, H, D)
            k = (h @ self.p(pre + "attn_k.weight").T).view(bsz, n, KV, D)
            v = (h @ self.p(pre + "attn_v.weight").T).view(bsz, n, KV, D)
            if self.arch == "qwen3":
                q = self._rms(q, self.p(pre + "attn_q_norm.weight"))
                k = self._rms(k, self.p(pre + "attn_k_norm.weight"))
            q, k = self._rope(q, pos), self._rope(k, pos)
            k = k.repeat_interleave(H // KV, dim=2)
            v = v.repeat_interleave(H // KV, dim=2)
            attn = nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
            x = x + attn.transpose(1, 2).reshape(bsz, n, H * D) @ self.p(pre + "attn_output.weight").T
            h = self._rms(x, self.p(pre + "ffn_norm.weight"))
            ff = nn.functional.silu(h @ self.p(pre + "ffn_gate.weight").T) * (h @ self.p(pre + "ffn_up.weight").T)
            x = x + ff @ self.p(pre + "ffn_down.weight").T
        x = self._rms(x, self.p("output_norm.weight"))
        out = self.p("token_embd.weight") if s.tie_embeddings else self.p("output.weight")
        return x @ out.T

    def gguf_tensors(self) -> dict:
        """The weights as {GGUF name: float32 numpy array}, for ``write_model(tensors=...)``."""
        return {t.name: self.p(t.name).detach().cpu().float().numpy() for t in self.plan}

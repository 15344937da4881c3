"""Hyper-parameter values a model file may hold, checked when a ``Model`` loads.

llama.cpp checks that a file's tensors match its hyper-parameters, but not that the values
make sense: a negative or NaN norm epsilon reaches ``GGML_ASSERT(eps >= 0.0f)`` in ggml's CPU
ops and aborts the process at the first decode; an odd head size aborts in RoPE; a head
count that does not divide the Q projection aborts in a reshape; a non-uniform per-layer
KV-head or expert-used array aborts or crashes in the graph; a NaN, zero or negative RoPE
base, scaling factor or attention factor gives NaN logits. One bit flip of a valid file is
enough. The rules below make every such value a ``ModelLoadError`` at load instead.

The list was made by reading every ``GGML_ASSERT`` / ``GGML_ABORT``, division and
allocation that a hyper-parameter reaches in llama.cpp's loader, graph builders and CPU ops
for the architectures llamadiff runs (docs/RELIABILITY.md has the table); the value-fuzz
test (tests/test_fuzz_values.py) tries 0, -1, NaN, +-inf and huge values for every numeric
key of each test architecture and allows no abort and no hang.

Values come from ``llamadiff._core.read_gguf_header``: the exact numbers of the file, not
the rounded strings of ``Model.metadata``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from llamadiff.errors import ModelLoadError

__all__ = ["check", "problems"]

# Architectures whose attention and expert structure is checked in full (the others get the
# value checks that hold for every architecture: finite floats, norm epsilon, RoPE).
STRUCTURED_ARCHS = frozenset({"qwen3", "qwen3moe", "llada", "llada-moe", "dream", "rnd1",
                              "qwen2", "llama", "bailingmoe2", "mistral3"})
MOE_ARCHS = frozenset({"qwen3moe", "llada-moe", "rnd1", "bailingmoe2"})
# llama.cpp runs Mixtral-style MoE as "llama"; mistral3's graph has the same optional experts
MAYBE_MOE_ARCHS = frozenset({"llama", "mistral3"})
# RoPE on the first rope.dimension_count dims of each head only (Ling 2.0's partial rotary)
PARTIAL_ROPE_ARCHS = frozenset({"bailingmoe2"})
# experts routed in groups (DeepSeek-V3 style), with a gating function read from the file and
# no default: build_moe_ffn aborts on any value but 1..4
GROUPED_MOE_ARCHS = frozenset({"bailingmoe2"})
GATING_FUNCS = (1, 2, 3, 4)     # softmax, sigmoid, softmax over the chosen, sqrt(softplus)

MAX_HEADS = 65536
MAX_EXPERTS = 1024          # llama.cpp's own limit (LLAMA_MAX_EXPERTS)
INT32_MAX = 2 ** 31 - 1


def check(path: str, meta: Mapping[str, Any], shapes: Mapping[str, tuple]) -> None:
    """Raise ModelLoadError naming every value of ``meta`` that llama.cpp cannot run with."""
    found = problems(meta, shapes)
    if found:
        raise ModelLoadError(
            f"{path!r} holds hyper-parameter values llama.cpp cannot run with (a corrupt or "
            "mis-converted file): " + "; ".join(found))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def problems(meta: Mapping[str, Any], shapes: Mapping[str, tuple]) -> list:
    """The rule violations of one file's header, as readable sentences (empty: fine)."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        return []                       # llama.cpp refuses the file itself
    A = arch + "."
    out: list = []
    non_finite: set = set()

    def number(key, *, rule, ok):
        """Check meta[key] (absent, or already reported as not finite: skipped) with
        ok(value); report ``rule`` otherwise."""
        if key not in meta or key in non_finite:
            return
        value = meta[key]
        values = value if isinstance(value, list) else [value]
        if not all(_is_number(v) for v in values) or not all(ok(v) for v in values):
            out.append(f"{key} = {_show(value)} (must be {rule})")

    # 1. every floating-point hyper-parameter of the architecture is finite
    for key, value in meta.items():
        if key.startswith(A):
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                out.append(f"{key} = {_show(value)} (must be finite)")
                non_finite.add(key)

    # 2. norm epsilons: ggml asserts eps >= 0; 0 (or a denormal) turns an all-zero row into NaN
    for name in ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"):
        number(A + name, rule="in [1e-13, 1]", ok=lambda v: 1e-13 <= v <= 1.0)
    # 3. RoPE: powf(base, -2i/n) and YaRN's log(base) need base > 1 (a huge base stops the
    #    rotation: finite but meaningless logits); 1/factor and log(factor)
    #    need a positive, normal factor (0 means "unset"); the attention factor scales Q and K
    number(A + "rope.freq_base", rule="in (1, 1e12]", ok=lambda v: 1.0 < v <= 1e12)
    for name in ("rope.scaling.factor", "rope.scale_linear"):
        number(A + name, rule="0 (unset) or in [1e-3, 1e6]", ok=lambda v: v == 0 or 1e-3 <= v <= 1e6)
    number(A + "rope.scaling.attn_factor", rule="in (0, 1e3]", ok=lambda v: 0.0 < v <= 1e3)
    for name in ("context_length", "rope.scaling.original_context_length"):
        number(A + name, rule=f"in [0, {INT32_MAX}]", ok=lambda v: 0 <= v <= INT32_MAX)

    if arch in STRUCTURED_ARCHS:
        out += _structure(arch, A, meta, shapes)
    return out


def _show(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value[:6])) + (", ...]" if len(value) > 6 else "]")
    return repr(value)


def _structure(arch: str, A: str, meta: Mapping[str, Any], shapes: Mapping[str, tuple]) -> list:
    """Heads, head sizes and experts: the shapes ggml's reshapes, RoPE and MoE views need."""
    out: list = []

    def uniform(key, default):
        """A per-layer value: a scalar, or an array whose entries are all equal (the graph
        sizes every layer's views from layer 0's value and the KV cache from each layer's)."""
        value = meta.get(key, default)
        if isinstance(value, list):
            if not value or len({v for v in value}) != 1:
                out.append(f"{key} = {_show(value)} (must be the same for every layer)")
                return None
            value = value[0]
        if value is not None and not _is_number(value):
            out.append(f"{key} = {_show(value)} (must be a number)")
            return None
        return value

    n_embd = meta.get(A + "embedding_length")
    n_head = uniform(A + "attention.head_count", None)
    n_kv = uniform(A + "attention.head_count_kv", n_head)
    if not _is_number(n_embd) or n_head is None or n_kv is None:
        return out                       # missing or already reported
    if not 1 <= n_head <= MAX_HEADS:
        out.append(f"{A}attention.head_count = {n_head} (must be in [1, {MAX_HEADS}])")
        return out
    if not 1 <= n_kv <= n_head or n_head % n_kv:
        out.append(f"{A}attention.head_count_kv = {n_kv} (must divide head_count = {n_head})")
        return out
    hd_k = meta.get(A + "attention.key_length", n_embd // n_head)
    hd_v = meta.get(A + "attention.value_length", n_embd // n_head)
    n_rot = meta.get(A + "rope.dimension_count", hd_k)
    if not all(_is_number(v) for v in (hd_k, hd_v, n_rot)):
        out.append(f"head sizes key_length={hd_k!r}, value_length={hd_v!r}, rope.dimension_count="
                   f"{n_rot!r} must be numbers")
        return out
    if arch in PARTIAL_ROPE_ARCHS:
        if hd_k != hd_v:
            out.append(f"head sizes differ: key_length {hd_k}, value_length {hd_v} (this architecture "
                       "needs them equal)")
        if not (2 <= n_rot <= hd_k and n_rot % 2 == 0):
            out.append(f"{A}rope.dimension_count = {n_rot} (must be even, in [2, head size {hd_k}])")
    elif hd_k != hd_v or hd_k != n_rot:
        out.append(f"head sizes differ: key_length {hd_k}, value_length {hd_v}, rope.dimension_count "
                   f"{n_rot} (this architecture needs them equal)")
    if hd_k < 2 or hd_k % 2:
        out.append(f"head size {hd_k} (from {A}attention.key_length or embedding_length / head_count) "
                   "must be even and >= 2 (RoPE rotates pairs)")
    # the projections' widths must be what the reshapes into heads expect
    for tensor, want, what in (("blk.0.attn_q.weight", hd_k * n_head, "head size x head_count"),
                               ("blk.0.attn_k.weight", hd_k * n_kv, "head size x head_count_kv"),
                               ("blk.0.attn_v.weight", hd_v * n_kv, "head size x head_count_kv"),
                               ("blk.0.attn_qkv.weight", hd_k * n_head + (hd_k + hd_v) * n_kv,
                                "the q, k and v widths")):
        if tensor in shapes and shapes[tensor][1] != want:
            out.append(f"{tensor} has {shapes[tensor][1]} rows but {what} is {want}")

    n_expert = meta.get(A + "expert_count", 0)
    n_used = uniform(A + "expert_used_count", 0)
    if n_used is None or not _is_number(n_expert):
        return out
    if arch in MOE_ARCHS or (arch in MAYBE_MOE_ARCHS and _is_number(n_expert) and n_expert > 0):
        if not 1 <= n_expert <= MAX_EXPERTS:
            out.append(f"{A}expert_count = {n_expert} (must be in [1, {MAX_EXPERTS}])")
        elif not 1 <= n_used <= n_expert:
            out.append(f"{A}expert_used_count = {n_used} (must be in [1, expert_count = {n_expert}])")
        gate = shapes.get("blk.0.ffn_gate_inp.weight")
        if gate is not None and gate[1] != n_expert:
            out.append(f"blk.0.ffn_gate_inp.weight routes to {gate[1]} experts but expert_count is {n_expert}")
        groups = meta.get(A + "expert_group_count", 0)
        used_groups = meta.get(A + "expert_group_used_count", 0)
        if arch in GROUPED_MOE_ARCHS:
            if not _is_number(groups) or not _is_number(used_groups):
                out.append(f"{A}expert_group_count / expert_group_used_count must be numbers")
            elif groups > 1 and (not groups < n_expert or n_expert % groups or not 0 < used_groups < groups):
                out.append(f"{A}expert_group_count = {groups}, expert_group_used_count = {used_groups} "
                           f"(the groups must divide expert_count = {n_expert} and be fewer, and "
                           "0 < groups used < groups)")
            gating = meta.get(A + "expert_gating_func")
            if gating is not None and gating not in GATING_FUNCS:
                out.append(f"{A}expert_gating_func = {_show(gating)} (must be one of {GATING_FUNCS})")
        elif _is_number(groups) and groups > 1:
            # these architectures route without groups; a group count would change the routing
            out.append(f"{A}expert_group_count = {groups} (this architecture has no expert groups)")
    elif n_expert or n_used:
        out.append(f"{A}expert_count = {n_expert}, expert_used_count = {n_used} (a dense "
                   f"{arch} model has no experts)")
    return out

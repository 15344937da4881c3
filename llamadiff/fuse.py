"""Fewer, wider weight matrices: a GGUF whose q/k/v and gate/up projections are fused
(``llamadiff fuse``, ``llamadiff convert --fuse``).

A decode step of a small block reads every weight once, and on a GPU each matrix is one
kernel launch whose fixed cost adds up over ~200 products per step (docs/BENCHMARKS.md,
"NVIDIA H200"). Fusing puts q, k and v into one ``blk.N.attn_qkv`` matrix (rows q, then k,
then v; biases alike) and gate and up into one ``blk.N.ffn_gate_up`` (gate rows first) --
qwen3: 7 products per layer become 4. llama.cpp's loader takes a fused ``attn_qkv`` as it is;
the fused ``ffn_gate_up`` of the dense bodies, and the merged ``ffn_gate_up_exps`` experts of
qwen3moe / bailingmoe2, need vendor/patches/0009. Both layouts load, and they compute the
same products (tests/test_fuse.py).

Rows are independent in every GGUF tensor type (quantised types pack blocks along a row), so
fusing is a concatenation of rows, exact for F32 / F16 / BF16 and quantised files alike. The
parts of one fused matrix must share a type: a file whose q, k and v were quantised to
different types (e.g. llama.cpp's Q4_K_M gives some ``attn_v`` Q6_K) keeps those unfused,
and the command says so. Quantise after fusing to fuse everything (``llamadiff.quantize``).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Union

import numpy as np

from llamadiff.errors import LlamaDiffError

log = logging.getLogger("llamadiff.fuse")

# GGUF architectures whose graph (with patch 0009) takes the fused tensors
FUSED_ATTENTION = ("qwen3", "qwen2", "llama", "mistral3", "qwen3moe")   # bailingmoe2: fused already
FUSED_FFN = ("qwen3", "qwen2", "llama", "mistral3", "bailingmoe2")      # dense FFNs (bailingmoe2: lead layers)
MERGED_EXPERTS = ("qwen3moe", "bailingmoe2")
FUSIBLE = tuple(sorted(set(FUSED_ATTENTION) | set(FUSED_FFN) | set(MERGED_EXPERTS)))

# fused tensor <- its parts, in row order, per layer; biases: fused with the weights (all the
# parts have one, or none does), or the group is left as it is when it has biases ("no")
GROUPS = (
    ("attn_qkv", ("attn_q", "attn_k", "attn_v"), FUSED_ATTENTION, "fused"),
    ("ffn_gate_up", ("ffn_gate", "ffn_up"), FUSED_FFN, "no"),           # patch 0009: no fused bias
    ("ffn_gate_up_exps", ("ffn_gate_exps", "ffn_up_exps"), MERGED_EXPERTS, "no"),
)
_LAYER = re.compile(r"^(blk\.\d+)\.")


class FuseError(LlamaDiffError, ValueError):
    """The file cannot be fused (an architecture without fused tensors, a broken file)."""


def _rows_axis(array: np.ndarray) -> int:
    """The axis of output rows in a tensor's numpy view: GGUF's second dimension from the
    fastest, which numpy lists second from last (the last, for a 1-D bias)."""
    return max(array.ndim - 2, 0) if array.ndim >= 2 else 0


def _plan(reader) -> tuple:
    """[(name, parts)] in file order (parts: the tensors it is made of), and the groups left
    unfused with the reason."""
    arch = str(reader.fields["general.architecture"].contents())
    if arch not in FUSIBLE:
        raise FuseError(f"fusing q/k/v and gate/up is not supported for the {arch!r} architecture "
                        f"(supported: {', '.join(FUSIBLE)})")
    tensors = {t.name: t for t in reader.tensors}
    layers = sorted({m.group(1) for m in map(_LAYER.match, tensors) if m})
    fused_from: dict = {}          # part name -> (fused name, part names)
    skipped = []
    for fused, parts, archs, biases in GROUPS:
        if arch not in archs:
            continue
        for layer in layers:
            weights = [f"{layer}.{p}.weight" for p in parts]
            if not all(n in tensors for n in weights):
                continue
            where = f"{layer}.{fused}"
            types = {tensors[n].tensor_type for n in weights}
            if len(types) > 1:
                skipped.append(f"{where} ({', '.join(tensors[n].tensor_type.name for n in weights)})")
                continue
            bias = [f"{layer}.{p}.bias" for p in parts]
            has_bias = [n in tensors for n in bias]
            # companions a fused matrix has no slot for (e.g. per-tensor scales): leave the group
            extra = [n for n in tensors if any(n.startswith(f"{layer}.{p}.") for p in parts)
                     and n not in weights and n not in bias]
            if extra or (any(has_bias) and (biases == "no" or not all(has_bias))):
                why = f"its {', '.join(extra)}" if extra else "its biases"
                skipped.append(f"{where} (kept apart for {why})")
                continue
            for n in weights:
                fused_from[n] = (f"{where}.weight", weights)
            if all(has_bias):
                for n in bias:
                    fused_from[n] = (f"{where}.bias", bias)
    plan, seen = [], set()
    for t in reader.tensors:
        if t.name in fused_from:
            name, names = fused_from[t.name]
            if name not in seen:
                seen.add(name)
                plan.append((name, [tensors[n] for n in names]))
        else:
            plan.append((t.name, [t]))
    return arch, plan, skipped


def _data(parts: list) -> np.ndarray:
    if len(parts) == 1:
        return parts[0].data
    arrays = [p.data for p in parts]
    return np.concatenate(arrays, axis=_rows_axis(arrays[0]))


def fuse_gguf(src: Union[str, os.PathLike], dst: Union[str, os.PathLike]) -> dict:
    """Write ``dst``: ``src`` with its q/k/v and gate/up projections fused (see the module
    doc). Returns what was done: {"architecture", "fused" (tensors written fused), "kept"
    (groups left unfused, with their types)}. ``dst`` may be ``src`` (replaced at the end)."""
    reader = _read(src)
    arch, plan, skipped = _plan(reader)
    _write(reader, Path(dst), arch, plan, {})
    if skipped:
        log.warning("left unfused (their parts differ in type; fuse before quantising): %s",
                    ", ".join(skipped))
    return {"architecture": arch, "fused": sum(len(parts) > 1 for _, parts in plan), "kept": skipped}


def copy_gguf(src: Union[str, os.PathLike], dst: Union[str, os.PathLike], metadata: dict) -> Path:
    """Write ``dst``: ``src`` with the key/values of ``metadata`` set (``key: (value, GGUFValueType,
    array item type or None)``) or removed (``key: None``); tensors as they are. The same writer
    as ``fuse_gguf`` (``llamadiff.testing.rewrite_model`` uses it for test files)."""
    reader = _read(src)
    arch = str(reader.fields["general.architecture"].contents())
    _write(reader, Path(dst), arch, [(t.name, [t]) for t in reader.tensors], metadata)
    return Path(dst)


def _reader_path(reader) -> str:
    """The file a GGUFReader read (gguf-py keeps its memory map's path)."""
    return getattr(reader, "path", None) or reader.data.filename


def _read(src):
    import gguf

    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"no such GGUF file: {src}")
    try:
        return gguf.GGUFReader(src)
    except Exception as exc:          # gguf-py raises ValueError / struct errors on bad files
        raise FuseError(f"{src} is not a readable GGUF file: {exc}") from None


def _write(reader, dst: Path, arch: str, plan: list, metadata: dict) -> None:
    """The file of ``reader`` with ``plan``'s tensors (name, parts) and ``metadata``'s changes,
    written to a temporary file beside ``dst`` and moved there at the end."""
    import gguf

    fd, name = tempfile.mkstemp(prefix=dst.name + ".", suffix=".part", dir=dst.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        writer = gguf.GGUFWriter(tmp, arch)
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture" or key in metadata:
                continue
            vtype = field.types[0]
            sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY and len(field.types) > 1 else None
            value = field.contents()
            if key == "general.alignment":
                writer.data_alignment = int(value)
            writer.add_key_value(key, value, vtype, sub_type=sub)
        for key, spec in metadata.items():
            if spec is not None:
                writer.add_key_value(key, spec[0], spec[1], sub_type=spec[2])
        for name, parts in plan:
            # numpy shapes (slowest dimension first); quantised (and BF16) data reads as bytes,
            # whose shape gguf-py turns back into elements when raw_dtype is given
            data = parts[0].data
            shape = list(data.shape)
            if len(parts) > 1:
                axis = _rows_axis(data)
                shape[axis] = sum(int(p.data.shape[axis]) for p in parts)
            raw = parts[0].tensor_type if data.dtype == np.uint8 else None
            writer.add_tensor_info(name, shape, data.dtype, sum(int(p.n_bytes) for p in parts), raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, parts in plan:
            writer.write_tensor_data(np.ascontiguousarray(_data(parts)))
        writer.close()
        # the new file gets the mode of the one it was made from (mkstemp's is 0600)
        os.chmod(tmp, stat.S_IMODE(os.stat(_reader_path(reader)).st_mode))
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

"""SDAR / SDAR-MoE Hugging Face checkpoints -> GGUF (``llamadiff convert``).

SDAR models are Qwen3 (or Qwen3-MoE) networks trained for block diffusion, so they convert
with llama.cpp's own ``convert_hf_to_gguf.py`` (vendored, copied into the package at build
time) as ``qwen3`` / ``qwen3moe``. On top of what that converter writes we record what a
block-diffusion runtime needs:

- ``tokenizer.ggml.mask_token_id``: the ``<|MASK|>`` token;
- ``diffusion.block_length``: the block length the model was trained with (from the
  config's ``block_length`` / ``block_size``, or ``--block-length``), which ``Generator``
  uses as its default.

Needs the optional extra: ``pip install llamadiff[convert]`` (torch, transformers,
safetensors).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Union

from llamadiff.errors import LlamaDiffError, UnsupportedModelError

logger = logging.getLogger("llamadiff.convert")

# HF architecture name -> the llama.cpp converter class it is a variant of
SDAR_ARCHITECTURES = {
    "SDARForCausalLM": "Qwen3Model",
    "SDARMoeForCausalLM": "Qwen3MoeModel",
}
MASK_TEXTS = ("<|MASK|>", "<|mask|>")
OUTTYPES = ("f32", "f16", "bf16", "q8_0")


class ConversionError(LlamaDiffError, ValueError):
    """The checkpoint could not be converted."""


def _converter_dir() -> Path:
    here = Path(__file__).resolve().parent / "_hf_convert"
    if not (here / "conversion" / "__init__.py").is_file():
        raise ConversionError("llama.cpp's converter is missing from this installation "
                              f"({here}); reinstall llamadiff")
    return here


def _check_dependencies() -> None:
    missing = []
    for module in ("torch", "transformers", "safetensors", "sentencepiece"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConversionError(f"conversion needs {', '.join(missing)}: pip install 'llamadiff[convert]'")


def _mask_token_id(hf_dir: Path) -> int:
    """The id of <|MASK|> from tokenizer.json / tokenizer_config.json."""
    candidates = {}
    tok_json = hf_dir / "tokenizer.json"
    if tok_json.is_file():
        data = json.loads(tok_json.read_text(encoding="utf-8"))
        for tok in data.get("added_tokens", []):
            candidates[tok["content"]] = tok["id"]
    cfg_json = hf_dir / "tokenizer_config.json"
    if cfg_json.is_file():
        data = json.loads(cfg_json.read_text(encoding="utf-8"))
        for tid, tok in (data.get("added_tokens_decoder") or {}).items():
            candidates[tok.get("content")] = int(tid)
        mask = data.get("mask_token")
        if isinstance(mask, dict):
            mask = mask.get("content")
        if mask in candidates:
            return candidates[mask]
    for text in MASK_TEXTS:
        if text in candidates:
            return candidates[text]
    raise ConversionError(f"{hf_dir}: no mask token ({' / '.join(MASK_TEXTS)}) in the tokenizer files; "
                          "is this a block-diffusion (SDAR) checkpoint?")


def convert(hf_dir: Union[str, Path], outfile: Union[str, Path], *, outtype: str = "f16",
            block_length: Optional[int] = None) -> Path:
    """Convert an SDAR / SDAR-MoE checkpoint directory to a GGUF file; returns its path."""
    hf_dir = Path(hf_dir)
    outfile = Path(outfile)
    if not hf_dir.is_dir():
        raise FileNotFoundError(f"not a checkpoint directory: {hf_dir}")
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{hf_dir} has no config.json")
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {OUTTYPES}, got {outtype!r}")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in SDAR_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{hf_dir}: architecture {arch!r} is not an SDAR checkpoint (expected one of "
            f"{sorted(SDAR_ARCHITECTURES)}); for other models use llama.cpp's convert_hf_to_gguf.py")
    if block_length is None:
        block_length = int(config.get("block_length") or config.get("block_size") or 4)
    if block_length < 1:
        raise ValueError(f"block_length must be >= 1, got {block_length}")
    mask_id = _mask_token_id(hf_dir)

    _check_dependencies()
    outfile.parent.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).resolve().parent / "_sdar_hf_convert.py"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_converter_dir())] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, str(script), str(hf_dir), str(outfile), outtype,
                           SDAR_ARCHITECTURES[arch], str(block_length), str(mask_id)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not outfile.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ConversionError(f"llama.cpp's converter failed on {hf_dir}: {tail[0]}")
    return outfile


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="llamadiff convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("hf_dir", help="SDAR / SDAR-MoE Hugging Face checkpoint directory")
    ap.add_argument("-o", "--outfile", required=True, help="output .gguf path")
    ap.add_argument("--outtype", default="f16", choices=OUTTYPES)
    ap.add_argument("--block-length", type=int, default=None,
                    help="trained block length to record (default: from config.json, else 4)")
    args = ap.parse_args(argv)
    path = convert(args.hf_dir, args.outfile, outtype=args.outtype, block_length=args.block_length)
    print(path)
    return 0

"""Block-diffusion Hugging Face checkpoints -> GGUF (``llamadiff convert``).

The published block-diffusion models are causal bodies that llama.cpp already knows, trained
for block diffusion, so they convert with llama.cpp's own ``convert_hf_to_gguf.py``
(vendored, copied into the package at build time) as the body's GGUF architecture. On top of
what that converter writes we record what a block-diffusion runtime needs:

- ``tokenizer.ggml.mask_token_id``: the family's mask token (read from the tokenizer files);
- ``diffusion.block_length``: the block length the model was trained with (from the
  config's block key, else the family's published default, or ``--block-length``), which
  ``Generator`` uses as its default;
- ``diffusion.shift_logits`` = true for families whose row p - 1 predicts position p.

``FAMILIES`` lists the checkpoint formats, one entry per ``architectures`` name of
config.json; docs/MODELS.md says, per family, what the GGUF holds and how llamadiff's
generation differs from the reference implementation.

DiffusionGemma (``CANVAS_ARCHITECTURES``) converts with llama.cpp's Gemma 4 converter into
GGUF arch ``diffusion-gemma`` (vendor/patches/0012): the decoder's weights as the body, the
encoder's layer scalars, the self-conditioning MLP, ``diffusion.canvas_length`` and the sampler's
settings (``CANVAS_SETTINGS``), under the names of the published GGUFs.

Needs the optional extra: ``pip install llamadiff[convert]`` (torch, transformers,
safetensors).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional, Union

from llamadiff.errors import LlamaDiffError, UnsupportedModelError

logger = logging.getLogger("llamadiff.convert")


@dataclasses.dataclass(frozen=True)
class Family:
    """A published block-diffusion checkpoint format."""

    name: str                   # the family, as its model cards name it
    examples: str               # published checkpoints of this format
    module: str                 # llama.cpp's conversion module ...
    converter: str              # ... and the converter class of the body
    gguf_arch: str              # the GGUF architecture it becomes
    block_length: int           # trained block length when config.json holds none
    block_keys: tuple           # config.json keys that hold the block length
    mask_texts: tuple           # the mask token's text in the tokenizer files
    shift_logits: bool          # row p - 1 predicts position p
    pre_tokenizer: str          # llama.cpp pre-tokenizer when the fingerprint is unknown
    model_type: str             # config.json's model_type ...
    modeling: str               # ... and the module of its auto_map (the checkpoint's own code)
    published_block_key: Optional[str]   # the block-length key published configs hold (None: none)
    # the published decoding rule, written as the GGUF's defaults (docs/GENERATION.md, "Model
    # defaults"): (GGUF key, config key or None, default); a value in the checkpoint's
    # config.json or generation_config.json under the config key wins
    decoding: tuple = ()
    # how to tell this format from another of the same ``architectures`` name: regular expressions
    # of its name (searched, without case, in config.json's _name_or_path and in every part of the
    # directory's path), and config keys only it holds
    markers: tuple = ()
    marker_keys: tuple = ()


# config.json ``architectures[0]`` -> family
FAMILIES = {
    "SDARForCausalLM": Family(
        "SDAR / TraDo", "JetLM/SDAR-1.7B-Chat, -4B-Chat, -8B-Chat; Gen-Verse/TraDo-4B-Instruct, "
        "-8B-Instruct, -8B-Thinking", "qwen", "Qwen3Model", "qwen3", 4,
        ("block_length", "block_size"), ("<|MASK|>", "<|mask|>"), False, "qwen2",
        "sdar", "modeling_sdar", "block_size"),
    "SDARMoeForCausalLM": Family(
        "SDAR-MoE", "JetLM/SDAR-30B-A3B-Chat, -Sci", "qwen", "Qwen3MoeModel", "qwen3moe", 4,
        ("block_length", "block_size"), ("<|MASK|>", "<|mask|>"), False, "qwen2",
        "sdar_moe", "modeling_sdar_moe", "block_size"),
    "Fast_dLLM_QwenForCausalLM": Family(
        "Fast-dLLM v2", "Efficient-Large-Model/Fast_dLLM_v2_1.5B, _7B", "qwen", "Qwen2Model", "qwen2", 32,
        ("bd_size", "block_length", "block_size"), ("|<MASK>|",), True, "qwen2",
        "Fast_dLLM_Qwen", "modeling", "bd_size"),
    "LLaDA2MoeModelLM": Family(
        "LLaDA2.0", "inclusionAI/LLaDA2.0-mini-preview, -mini, -flash", "bailingmoe", "BailingMoeV2Model",
        "bailingmoe2", 32, ("block_length", "block_size"), ("<|mask|>",), False, "bailingmoe2",
        "llada2_moe", "modeling_llada2_moe", None),
    # Nemotron-Labs-Diffusion (3B / 8B / 14B, from Ministral 3): the architectures name, the block
    # key and the mask token are assumed (docs/MODELS.md); the body is Ministral 3's
    "NemotronDiffusionForCausalLM": Family(
        "Nemotron-Labs-Diffusion", "nvidia/Nemotron-Labs-Diffusion-3B, -8B, -14B", "mistral3",
        "Mistral3Model.Ministral3Model", "mistral3", 32, ("block_length", "block_size", "bd_size"),
        ("<|mask|>", "<mask>", "[MASK]"), False, "tekken", "ministral3", "modeling_nemotron_diffusion",
        "block_length", markers=(r"nemotron[-_. ]?(labs[-_. ]?)?diffusion",),
        marker_keys=("block_length", "mask_token_id")),
    # Stable-DiffCoder (ByteDance Seed, 8B, from Seed-Coder: a llama body); architectures name and
    # mask token assumed; its model card decodes blocks of 4, one token per step, lowest confidence
    # remasked (low_confidence_static), greedy
    "StableDiffCoderForCausalLM": Family(
        "Stable-DiffCoder", "ByteDance-Seed/Stable-DiffCoder-8B-Base, -8B-Instruct", "llama", "LlamaModel",
        "llama", 4, ("block_size", "block_length"), ("<[MASK]>", "<|mask|>", "[MASK]"), False, "llama-bpe",
        "stable_diffcoder", "modeling_stable_diffcoder", "block_size",
        decoding=(("diffusion.strategy", None, "low_confidence_static"),),
        markers=(r"stable[-_. ]?diff[-_. ]?coder",), marker_keys=("block_size", "mask_token_id")),
}
# Formats that share an ``architectures`` name with one of FAMILIES, told apart by ``markers``
# / ``marker_keys`` (or named with convert(family=...)). LLaDA2.1 ships LLaDA2.0's modeling
# code and config (LLaDA2MoeModelLM, model_type llada2_moe); what differs is its decoding rule.
VARIANTS = {
    # published as the body's own class: told by the markers, never taken for the plain body
    "Ministral3ForCausalLM": (FAMILIES["NemotronDiffusionForCausalLM"],),
    "LlamaForCausalLM": (FAMILIES["StableDiffCoderForCausalLM"],),
    "LLaDA2MoeModelLM": (dataclasses.replace(
        FAMILIES["LLaDA2MoeModelLM"], name="LLaDA2.1", examples="inclusionAI/LLaDA2.1-mini, -flash",
        decoding=(("diffusion.strategy", None, "token_editing"), ("diffusion.threshold", "threshold", 0.7),
                  ("diffusion.editing_threshold", "editing_threshold", 0.5),
                  ("diffusion.max_post_steps", "max_post_steps", 16)),
        markers=(r"llada[-_. ]?2[-_. ]1(?!\d)",), marker_keys=("editing_threshold", "max_post_steps")),),
}
# the range of each decoding value a checkpoint may give (GGUF key -> kind, low, high)
DECODING_VALUES = {"diffusion.threshold": (float, 1e-6, 1.0), "diffusion.editing_threshold": (float, 0.0, 1.0),
                   "diffusion.max_post_steps": (int, 0, 4096), "diffusion.strategy": (str, None, None)}
OUTTYPES = ("f32", "f16", "bf16", "q8_0")

# DiffusionGemma (canvas diffusion, GGUF arch diffusion-gemma): config.json ``architectures``
# names (the second: the pre-release name the published GGUFs' converter also registers)
CANVAS_ARCHITECTURES = ("DiffusionGemmaForBlockDiffusion", "DiffusionGemma4ModelForBlockDiffusion")
# its sampler's settings written as the GGUF's defaults: GGUF key -> (generation_config.json key,
# kind, low, high); entropy_bound may sit in sampler_config
CANVAS_SETTINGS = {
    "diffusion.eb_max_steps": ("max_denoising_steps", int, 1, 4096),
    "diffusion.eb_t_min": ("t_min", float, 1e-6, 1e4),
    "diffusion.eb_t_max": ("t_max", float, 1e-6, 1e4),
    "diffusion.eb_entropy_bound": ("entropy_bound", float, 0.0, 1e4),
    "diffusion.eb_stability_threshold": ("stability_threshold", int, 0, 64),
    "diffusion.eb_confidence_threshold": ("confidence_threshold", float, 0.0, 1e4),
}


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


def _read_json(path: Path, kind: type = dict):
    """A JSON file of the checkpoint, or a ConversionError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, kind):
        raise ConversionError(f"{path} must hold a JSON {'object' if kind is dict else 'list'}, "
                              f"not {type(data).__name__}")
    return data


def _mask_token_id(hf_dir: Path, family: Family, config: dict) -> int:
    """The id of the family's mask token, from tokenizer.json / tokenizer_config.json."""
    candidates = {}

    def add(text, tid, where):
        if not isinstance(text, str) or isinstance(tid, bool) or not isinstance(tid, int) or tid < 0:
            raise ConversionError(f"{where}: an added token needs a text and an id >= 0, got "
                                  f"{text!r} / {tid!r}")
        candidates[text] = tid

    tok_json = hf_dir / "tokenizer.json"
    if tok_json.is_file():
        added = _read_json(tok_json).get("added_tokens", [])
        for tok in added if isinstance(added, list) else [added]:
            tok = tok if isinstance(tok, dict) else {}
            add(tok.get("content"), tok.get("id"), tok_json)
    cfg_json = hf_dir / "tokenizer_config.json"
    mask = None
    if cfg_json.is_file():
        data = _read_json(cfg_json)
        decoder = data.get("added_tokens_decoder") or {}
        for tid, tok in (decoder.items() if isinstance(decoder, dict) else ()):
            try:
                tid = int(tid)
            except ValueError:
                tid = None
            add(tok.get("content") if isinstance(tok, dict) else None, tid, f"{cfg_json} added_tokens_decoder")
        mask = data.get("mask_token")
        if isinstance(mask, dict):
            mask = mask.get("content")
    if isinstance(mask, str) and mask in candidates:
        return candidates[mask]
    for text in family.mask_texts:
        if text in candidates:
            return candidates[text]
    mask_id = config.get("mask_token_id")
    if isinstance(mask_id, int) and not isinstance(mask_id, bool) and mask_id >= 0:
        return mask_id
    raise ConversionError(f"{hf_dir}: no mask token ({' / '.join(family.mask_texts)}) in the tokenizer "
                          f"files; is this a {family.name} checkpoint?")


def _family_of(hf_dir: Path, arch: str, config: dict, generation: dict, name: Optional[str]) -> Family:
    """The format of a checkpoint: among FAMILIES[arch] and its VARIANTS, the one ``name``
    names, else the variant whose markers the checkpoint carries, else FAMILIES[arch] (an
    architectures name that is only a body's, without the markers, is not converted)."""
    base = (FAMILIES[arch],) if arch in FAMILIES else ()
    candidates = VARIANTS.get(arch, ()) + base
    if name is not None:
        for family in candidates:
            if family.name.lower() == str(name).lower():
                return family
        raise ValueError(f"family {name!r} is not a format of {arch} checkpoints; choose one of "
                         f"{', '.join(f.name for f in candidates)}")
    names = [str(config.get("_name_or_path", ""))] + list(hf_dir.resolve().parts)
    for family in VARIANTS.get(arch, ()):
        if any(re.search(m, n, re.IGNORECASE) for m in family.markers for n in names) or any(
                config.get(k) is not None or generation.get(k) is not None for k in family.marker_keys):
            return family
    if base:
        if VARIANTS.get(arch):
            logger.warning("%s: converted as %s (no marks of %s); pass family= (--family) if it is one", hf_dir,
                           base[0].name, " or ".join(f.name for f in VARIANTS[arch]))
        return base[0]
    raise UnsupportedModelError(
        f"{hf_dir}: a {arch} checkpoint without the marks of {' or '.join(f.name for f in candidates)} (a "
        f"name containing {' / '.join(m for f in candidates for m in f.markers)}, or config keys "
        f"{' / '.join(k for f in candidates for k in f.marker_keys)}): a plain causal model is not a "
        "block-diffusion checkpoint; pass family= (--family) if it is one")


def _decoding(family: Family, config: dict, generation: dict, where: Path) -> list:
    """[(GGUF key, value)] of the family's published decoding rule, the checkpoint's values first."""
    out = []
    for key, config_key, default in family.decoding:
        value = default
        for source, name in ((generation, "generation_config.json"), (config, "config.json")):
            if config_key is not None and source.get(config_key) is not None:    # null: not given
                value = source[config_key]
                kind, low, high = DECODING_VALUES[key]
                if kind is not str:
                    value = _checked(value, kind, low, high, f"{where / name}: {config_key}")
                elif not isinstance(value, str):
                    raise ConversionError(f"{where / name}: {config_key} = {value!r} is not a string")
                break
        out.append((key, value))
    return out


def _checked(value, kind, low, high, where: str):
    """A number of the checkpoint's settings within [low, high], or a ConversionError."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int) \
        and low <= value <= high
    if not ok:
        raise ConversionError(f"{where} = {value!r} is not {'a number' if kind is float else 'an int'} "
                              f"in [{low:g}, {high:g}]")
    return kind(value)


def _run_child(args: list, hf_dir: Path, outfile: Path, what: str) -> None:
    """llama.cpp's converter (with llamadiff's additions, _hf_convert_child.py) in a child process;
    a ConversionError with its last error line when it fails (no half-written GGUF left behind)."""
    _check_dependencies()
    outfile.parent.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).resolve().parent / "_hf_convert_child.py"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_converter_dir())] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, str(script)] + args, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not outfile.is_file():
        outfile.unlink(missing_ok=True)
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if "Error" in ln or "error" in ln]
        how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"exit status {proc.returncode}")
        raise ConversionError(f"llama.cpp's converter failed on {hf_dir} ({what}; {how}): "
                              + ((errors or lines)[-1] if lines else "no output"))


def _convert_canvas(hf_dir: Path, outfile: Path, outtype: str, config: dict) -> Path:
    """A DiffusionGemma checkpoint -> GGUF arch diffusion-gemma: the Gemma 4 body, both phases'
    layer scalars, the self-conditioning MLP, ``diffusion.canvas_length`` (config.json's, required)
    and the sampler's settings of generation_config.json (``CANVAS_SETTINGS``)."""
    C = config.get("canvas_length")
    if isinstance(C, bool) or not isinstance(C, int) or not 1 <= C <= 65536:
        raise ConversionError(f"{hf_dir / 'config.json'}: canvas_length = {C!r} is not a canvas length "
                              "(an int in [1, 65536]); is this a DiffusionGemma checkpoint?")
    generation_path = hf_dir / "generation_config.json"
    generation = _read_json(generation_path) if generation_path.is_file() else {}
    sampler = generation.get("sampler_config")
    sampler = sampler if isinstance(sampler, dict) else {}
    settings = []
    for key, (name, kind, low, high) in CANVAS_SETTINGS.items():
        value = generation.get(name, sampler.get(name))
        if value is not None:
            settings.append((key, _checked(value, kind, low, high, f"{generation_path}: {name}")))
    _run_child(["--canvas", str(hf_dir), str(outfile), outtype, str(C), json.dumps(settings)],
               hf_dir, outfile, "DiffusionGemma")
    logger.info("converted %s (DiffusionGemma) to %s: diffusion-gemma, canvas %d%s", hf_dir, outfile, C,
                "".join(f", {k} {v}" for k, v in settings))
    return outfile


def convert(hf_dir: Union[str, Path], outfile: Union[str, Path], *, outtype: str = "f16",
            block_length: Optional[int] = None, fuse: bool = False, family: Optional[str] = None) -> Path:
    """Convert a block-diffusion checkpoint directory (``FAMILIES``) to a GGUF file; returns
    its path. ``fuse``: q/k/v and gate/up as one matrix each (``llamadiff.fuse``). ``family``:
    the format by name where two share an ``architectures`` name (``VARIANTS``: "LLaDA2.1"),
    else it is told from the checkpoint."""
    hf_dir = Path(hf_dir)
    outfile = Path(outfile)
    if not hf_dir.is_dir():
        raise FileNotFoundError(f"not a checkpoint directory: {hf_dir}")
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{hf_dir} has no config.json")
    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {OUTTYPES}, got {outtype!r}")
    config = _read_json(config_path)
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    if arch in CANVAS_ARCHITECTURES:
        for name, value in (("block_length", block_length), ("family", family)):
            if value is not None:
                raise ValueError(f"{name} is not a setting of a DiffusionGemma conversion (its canvas "
                                 "length is the checkpoint's canvas_length)")
        if fuse:
            raise ValueError("fuse=True (--fuse) covers the block-diffusion bodies; DiffusionGemma's Gemma 4 "
                             "body is converted as published")
        return _convert_canvas(hf_dir, outfile, outtype, config)
    if arch not in FAMILIES and arch not in VARIANTS:
        names = ", ".join([f"{a} ({f.name})" for a, f in FAMILIES.items()] + [f"{CANVAS_ARCHITECTURES[0]} (DiffusionGemma)"])
        raise UnsupportedModelError(
            f"{hf_dir}: architecture {arch!r} is not a block-diffusion checkpoint llamadiff converts "
            f"(expected one of: {names}); for other models use llama.cpp's convert_hf_to_gguf.py")
    # generation settings: read only for the formats they can tell apart or configure
    generation_path = hf_dir / "generation_config.json"
    reads = VARIANTS.get(arch) or any(f.decoding for f in (FAMILIES.get(arch),) if f is not None)
    generation = _read_json(generation_path) if reads and generation_path.is_file() else {}
    family = _family_of(hf_dir, arch, config, generation, family)
    decoding = _decoding(family, config, generation, hf_dir)
    if block_length is None:
        block_length = family.block_length
        for key in family.block_keys:
            if key in config:
                value = config[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConversionError(f"{config_path}: {key} = {value!r} is not a block length "
                                          "(an int >= 1); pass block_length= / --block-length")
                block_length = value
                break
    elif isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1:
        raise ValueError(f"block_length must be an int >= 1, got {block_length!r}")
    mask_id = _mask_token_id(hf_dir, family, config)

    _run_child([str(hf_dir), str(outfile), outtype, family.module, family.converter, family.pre_tokenizer,
                str(block_length), str(mask_id), "1" if family.shift_logits else "0", json.dumps(decoding)],
               hf_dir, outfile, family.name)
    if fuse:
        from llamadiff.fuse import fuse_gguf
        try:
            fuse_gguf(outfile, outfile)
        except BaseException:
            outfile.unlink(missing_ok=True)
            raise
    logger.info("converted %s (%s) to %s: %s, block length %d, mask token %d%s%s", hf_dir, family.name,
                outfile, family.gguf_arch, block_length, mask_id, ", fused" if fuse else "",
                "".join(f", {k} {v}" for k, v in decoding))
    return outfile

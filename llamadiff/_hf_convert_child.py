"""Child process of ``llamadiff.convert``: runs llama.cpp's converter with block-diffusion
additions.

Run as a script with PYTHONPATH pointing at ``llamadiff/_hf_convert`` (llama.cpp's
``conversion`` package and its own ``gguf``, which must not mix with the ``gguf`` release
that llamadiff itself imports -- hence a separate process).

    python _hf_convert_child.py HF_DIR OUTFILE OUTTYPE MODULE BASE_CLASS PRE \
        BLOCK_LENGTH MASK_ID SHIFT_LOGITS DECODING

DECODING: a JSON list of [GGUF key, value] pairs (the family's published decoding rule).

    python _hf_convert_child.py --canvas HF_DIR OUTFILE OUTTYPE CANVAS_LENGTH SETTINGS

converts a DiffusionGemma checkpoint (arch diffusion-gemma, vendor/patches/0012) with llama.cpp's
Gemma 4 converter; SETTINGS: a JSON list of [GGUF key, value] pairs (the sampler's settings).
"""

import importlib
import json
import logging
import sys
from pathlib import Path


def _write(gguf, writer, key, value):
    if isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    else:
        writer.add_uint32(key, value)


def _file_type(gguf, outtype):
    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]


def canvas(argv):
    """DiffusionGemma: the decoder's weights are the Gemma 4 body (model.decoder.* read as
    model.*); the encoder adds its per-layer scalars only (its other weights are the decoder's,
    tied, and may be stored under either name); the decoder's self-conditioning MLP. The GGUF
    names are those of the published GGUFs (llama.cpp PR #24423's converter)."""
    hf_dir, outfile, outtype, canvas_length, settings = argv
    logging.basicConfig(level=logging.WARNING)

    import gguf
    import torch
    from conversion.gemma import Gemma4Model

    # the Gemma 4 converter's tensor map and keys, under the arch name llama.cpp's loader (with
    # vendor/patches/0012) knows this model by; this child process converts one model
    gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GEMMA4] = "diffusion-gemma"
    sc_names = {"pre_norm": "self_cond_pre_norm", "gate_proj": "self_cond_gate", "up_proj": "self_cond_up",
                "down_proj": "self_cond_down"}
    written = set()

    class CanvasModel(Gemma4Model):
        model_arch = Gemma4Model.model_arch

        def set_gguf_parameters(self):
            self.hparams.setdefault("num_kv_shared_layers", 0)
            self.hparams.setdefault("hidden_size_per_layer_input", 0)
            super().set_gguf_parameters()
            self.gguf_writer.add_causal_attention(False)
            self.gguf_writer.add_uint32("diffusion.canvas_length", int(canvas_length))
            for key, value in json.loads(settings):
                _write(gguf, self.gguf_writer, key, value)

        def modify_tensors(self, data_torch, name, bid):
            if "vision" in name or name.startswith("lm_head"):
                return                                   # no images; the head is the embedding
            # (the base converter may already have dropped "language_model." from a name)
            enc = next((p for p in ("model.encoder.language_model.", "model.encoder.") if name.startswith(p)), None)
            if enc is not None and name.endswith("layer_scalar.weight"):
                yield (f"blk.{bid}.enc_layer_output_scale.weight", data_torch)
                return
            if name.startswith("model.decoder.self_conditioning."):
                part, _, rest = name[len("model.decoder.self_conditioning."):].partition(".")
                yield (f"{sc_names[part]}.{rest}", data_torch)
                return
            prefix = "model.decoder." if name.startswith("model.decoder.") else enc
            if prefix is not None:
                name = "model." + name[len(prefix):]
            if name == "model.embed_tokens.weight" and "self_cond_embd_t.weight" not in written:
                # the embedding transposed too: the self-conditioning product as a matrix product
                # (vendor/patches/0012; the published GGUFs lack it and take out_prod)
                written.add("self_cond_embd_t.weight")
                yield ("self_cond_embd_t.weight", data_torch.t().contiguous())
            for out in super().modify_tensors(data_torch, name, bid):
                if out[0] not in written:                # a tied weight stored under both names
                    written.add(out[0])
                    yield out

    with torch.inference_mode():
        CanvasModel(Path(hf_dir), _file_type(gguf, outtype), Path(outfile)).write()


def main(argv):
    if argv and argv[0] == "--canvas":
        return canvas(argv[1:])
    hf_dir, outfile, outtype, module, base_name, pre, block_length, mask_id, shift, decoding = argv
    block_length, mask_id, shift = int(block_length), int(mask_id), shift == "1"
    decoding = json.loads(decoding)
    logging.basicConfig(level=logging.WARNING)

    import gguf
    import torch

    base = importlib.import_module(f"conversion.{module}")
    for part in base_name.split("."):         # a converter class may be nested (Mistral3Model.Ministral3Model)
        base = getattr(base, part)

    class BlockDiffusionModel(base):
        """The body's own converter plus block-diffusion metadata."""
        model_arch = base.model_arch

        def set_gguf_parameters(self):
            super().set_gguf_parameters()
            self.gguf_writer.add_uint32("diffusion.block_length", block_length)
            if shift:
                self.gguf_writer.add_diffusion_shift_logits(True)
            rope = self.hparams.get("rope_parameters") or {}
            if (module == "mistral3" and self.hparams.get("model_type") != "ministral3"
                    and "llama_4_scaling_beta" in rope):
                # Ministral 3's llama-4 attention temperature, which llama.cpp's converter writes
                # for model_type "ministral3" only: a diffusion checkpoint may name another type
                self.gguf_writer.add_rope_scaling_yarn_log_mul(rope.get("mscale_all_dim", 1.0))
                self.gguf_writer.add_attn_temperature_scale(rope["llama_4_scaling_beta"])
            for key, value in decoding:
                _write(gguf, self.gguf_writer, key, value)

        def set_vocab(self):
            super().set_vocab()
            self.gguf_writer.add_mask_token_id(mask_id)

        def get_vocab_base_pre(self, tokenizer) -> str:
            # the family's tokenizer; accept it when its fingerprint is not in llama.cpp's
            # list (e.g. a re-saved tokenizer with extra special tokens)
            try:
                return super().get_vocab_base_pre(tokenizer)
            except NotImplementedError:
                logging.warning("pre-tokenizer not recognised; using the family's (%r)", pre)
                return pre

    with torch.inference_mode():
        BlockDiffusionModel(Path(hf_dir), _file_type(gguf, outtype), Path(outfile)).write()


if __name__ == "__main__":
    main(sys.argv[1:])

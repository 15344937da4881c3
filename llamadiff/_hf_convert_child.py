"""Child process of ``llamadiff.convert``: runs llama.cpp's converter with block-diffusion
additions.

Run as a script with PYTHONPATH pointing at ``llamadiff/_hf_convert`` (llama.cpp's
``conversion`` package and its own ``gguf``, which must not mix with the ``gguf`` release
that llamadiff itself imports -- hence a separate process).

    python _hf_convert_child.py HF_DIR OUTFILE OUTTYPE MODULE BASE_CLASS PRE \
        BLOCK_LENGTH MASK_ID SHIFT_LOGITS DECODING

DECODING: a JSON list of [GGUF key, value] pairs (the family's published decoding rule).
"""

import importlib
import json
import logging
import sys
from pathlib import Path


def main(argv):
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
                if isinstance(value, str):
                    self.gguf_writer.add_string(key, value)
                elif isinstance(value, float):
                    self.gguf_writer.add_float32(key, value)
                else:
                    self.gguf_writer.add_uint32(key, value)

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

    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    with torch.inference_mode():
        BlockDiffusionModel(Path(hf_dir), ftype, Path(outfile)).write()


if __name__ == "__main__":
    main(sys.argv[1:])

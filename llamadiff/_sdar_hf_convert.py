"""Child process of ``llamadiff.convert``: runs llama.cpp's converter with SDAR additions.

Run as a script with PYTHONPATH pointing at ``llamadiff/_hf_convert`` (llama.cpp's
``conversion`` package and its own ``gguf``, which must not mix with the ``gguf`` release
that llamadiff itself imports -- hence a separate process).

    python _sdar_hf_convert.py HF_DIR OUTFILE OUTTYPE BASE_CLASS BLOCK_LENGTH MASK_ID
"""

import logging
import sys
from pathlib import Path


def main(argv):
    hf_dir, outfile, outtype, base_name, block_length, mask_id = argv
    block_length, mask_id = int(block_length), int(mask_id)
    logging.basicConfig(level=logging.WARNING)

    import gguf
    import torch
    from conversion import qwen

    base = getattr(qwen, base_name)

    class SDARModel(base):
        """The Qwen3 converter plus block-diffusion metadata."""
        model_arch = base.model_arch

        def set_gguf_parameters(self):
            super().set_gguf_parameters()
            self.gguf_writer.add_uint32("diffusion.block_length", block_length)

        def set_vocab(self):
            super().set_vocab()
            self.gguf_writer.add_mask_token_id(mask_id)

        def get_vocab_base_pre(self, tokenizer) -> str:
            # SDAR uses Qwen's tokenizer; accept it even when its fingerprint is not in
            # llama.cpp's list (e.g. a re-saved tokenizer with extra special tokens)
            try:
                return super().get_vocab_base_pre(tokenizer)
            except NotImplementedError:
                logging.warning("pre-tokenizer not recognised; using Qwen's ('qwen2')")
                return "qwen2"

    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    with torch.inference_mode():
        SDARModel(Path(hf_dir), ftype, Path(outfile)).write()


if __name__ == "__main__":
    main(sys.argv[1:])

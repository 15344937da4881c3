"""Train the tiny default models on the CPU and export them to GGUF.

    python -m training.train all                 # both, in parallel: the shipped models
    python -m training.train block --out M.gguf [--steps N] [--seed S]
    python -m training.train full  --out M.gguf [--steps N] [--seed S]

``block``: a qwen3 body trained with SDAR's block-diffusion objective (block length 4,
written to the GGUF as ``diffusion.block_length``): the clean sequence and a noised copy go
through the model together; the clean copy attends block-causally, a noised block attends to
the clean blocks before it and to itself, and the loss is on its masked answer positions.
``full``: a llada body trained with LLaDA's masked-diffusion objective: answer positions masked
with probability t ~ U(0, 1), full bidirectional attention, loss on the masked positions / t.

Sequences are the tokenized prompt (as ``Generator`` tokenizes it), the answer, then the
end-of-text token up to a fixed length, so a model learns to stop. Seeds are fixed; the data
comes from ``training/tasks.py``.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from llamadiff import Model, testing
from llamadiff import tasks
from training.model import TinyLM

SEQ_LEN = 24
BLOCK = 4
DEFAULT_STEPS = {"block": 8000, "full": 18000}
# the harder tasks (lookup needs content-based retrieval, sums carry) get more of the data
TASK_WEIGHTS_BY_NAME = {"add": 2, "sort": 1, "rev": 1, "copy": 1, "get": 3}
TASK_NAMES = list(TASK_WEIGHTS_BY_NAME)
TASK_WEIGHTS = [TASK_WEIGHTS_BY_NAME[t] for t in TASK_NAMES]
SHAPES = {
    "block": ("qwen3", testing.ModelShape(n_embd=96, n_layer=3, n_head=4, n_head_kv=2, head_dim=24, n_ff=288,
                                          tie_embeddings=True)),
    "full": ("llada", testing.ModelShape(n_embd=96, n_layer=3, n_head=4, n_head_kv=4, head_dim=24, n_ff=288,
                                         tie_embeddings=False)),
}


def tokenizer(arch: str):
    """llama.cpp's tokenizer of the byte vocab (what Generator uses at inference)."""
    tmp = Path(tempfile.mkdtemp()) / f"{arch}-vocab.gguf"
    testing.write_model(tmp, arch, shape=testing.ModelShape(n_layer=1))
    return Model(str(tmp), vocab_only=True)


def encode(vocab: Model, prompt: str, answer: str) -> tuple[list, int]:
    """(token ids padded with end-of-text to SEQ_LEN, prompt length)."""
    eos = testing.byte_vocab().eos_id
    p = vocab.tokenize(prompt, add_special=True)
    a = vocab.tokenize(answer, add_special=False)
    ids = p + a + [eos]
    if len(ids) > SEQ_LEN:
        raise ValueError(f"example too long: {prompt!r} {answer!r}")
    return ids + [eos] * (SEQ_LEN - len(ids)), len(p)


def block_masks(n: int, block: int) -> torch.Tensor:
    """(2n, 2n) attention of [clean; noisy]: clean is block-causal; a noisy block sees the
    clean blocks before it and itself."""
    b = torch.arange(n) // block
    clean_clean = b[None, :] <= b[:, None]
    noisy_clean = b[None, :] < b[:, None]
    noisy_noisy = b[None, :] == b[:, None]
    top = torch.cat([clean_clean, torch.zeros(n, n, dtype=torch.bool)], dim=1)
    bottom = torch.cat([noisy_clean, noisy_noisy], dim=1)
    return torch.cat([top, bottom], dim=0)


def batch(vocab, kind: str, rng: random.Random, size: int, mask_id: int):
    seqs, plens = [], []
    for _ in range(size):
        task = rng.choices(TASK_NAMES, weights=TASK_WEIGHTS)[0]
        while True:
            prompt, answer = tasks.make(task, rng)
            if not tasks.held_out(prompt):
                break
        ids, p = encode(vocab, prompt, answer)
        seqs.append(ids)
        plens.append(p)
    x = torch.tensor(seqs)
    pos = torch.arange(SEQ_LEN)[None, :]
    answer_region = pos >= torch.tensor(plens)[:, None]
    t = torch.rand(size, 1).clamp_min(1e-3)
    masked = (torch.rand(size, SEQ_LEN) < t) & answer_region
    noisy = torch.where(masked, torch.full_like(x, mask_id), x)
    return x, noisy, masked, t


def train(kind: str, out: Path, steps: int, seed: int, batch_size: int, lr: float) -> dict:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    arch, shape = SHAPES[kind]
    vocab = tokenizer(arch)
    mask_id = testing.byte_vocab().mask_id
    model = TinyLM(arch, shape, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    attn_block = block_masks(SEQ_LEN, BLOCK)
    positions = torch.cat([torch.arange(SEQ_LEN), torch.arange(SEQ_LEN)])
    full = torch.ones(SEQ_LEN, SEQ_LEN, dtype=torch.bool)
    t0 = time.time()
    ema = None
    log_every = 200
    for step in range(steps):
        x, noisy, masked, t = batch(vocab, kind, rng, batch_size, mask_id)
        # linear warm-up, then cosine decay to a tenth
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        if kind == "block":
            logits = model(torch.cat([x, noisy], dim=1), attn_block, positions)[:, SEQ_LEN:]
        else:
            logits = model(noisy, full)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x.reshape(-1),
                                               reduction="none").view_as(x)
        loss = (ce * masked / t).sum() / masked.numel()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if (step + 1) % log_every == 0:
            print(f"[{kind}] step {step + 1}/{steps} loss {ema:.4f} ({(time.time() - t0) / 60:.1f} min)", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    testing.write_model(out, arch, shape=shape, tensors=model.gguf_tensors(),
                        block_length=BLOCK if kind == "block" else None,
                        metadata={"general.name": f"llamadiff-{kind}-tiny",
                                  # chat turns reach the model as the plain prompts it learned
                                  "tokenizer.chat_template": tasks.chat_template(
                                      bos=vocab.tokenize("a", add_special=True) != vocab.tokenize("a", add_special=False)),
                                  "llamadiff.training.steps": steps,
                                  "llamadiff.training.seed": seed,
                                  "llamadiff.training.seq_len": SEQ_LEN,
                                  # full diffusion denoises the whole trained length: the
                                  # Generator's default generation fills it after the prompt
                                  **({"diffusion.seq_length": SEQ_LEN} if kind == "full" else {})})
    return {"kind": kind, "steps": steps, "loss": ema, "minutes": (time.time() - t0) / 60, "out": str(out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=sorted(SHAPES) + ["all"])
    ap.add_argument("--out", default=None, help="GGUF to write (all: llamadiff/models/{block,full}-tiny.gguf)")
    ap.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default: {DEFAULT_STEPS})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.kind == "all":
        # one process per model, one thread each: on 2 cores this beats two threads per model
        import subprocess
        models = Path(__file__).resolve().parents[1] / "llamadiff" / "models"
        procs = [subprocess.Popen([sys.executable, "-m", "training.train", kind, "--out",
                                   str(models / f"{kind}-tiny.gguf"), "--seed", str(args.seed), "--threads", "1"]
                                  + (["--steps", str(args.steps)] if args.steps else []))
                 for kind in ("block", "full")]
        return max(p.wait() for p in procs)
    if not args.out:
        ap.error("--out is required for one model")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(train(args.kind, Path(args.out), args.steps or DEFAULT_STEPS[args.kind], args.seed,
                args.batch_size, args.lr), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``llamadiff`` command line (also ``python -m llamadiff``).

    llamadiff generate -m model.gguf -p "prompt" [options] [--stream | --visual] [--json]
    llamadiff chat -m model.gguf
    llamadiff info model.gguf
    llamadiff convert HF_DIR -o model.gguf [--outtype f16|q8_0]   (SDAR, TraDo, Fast-dLLM v2, LLaDA2.x, Nemotron-Labs-Diffusion, Stable-DiffCoder)
    llamadiff bench [--quick]
    llamadiff rpc-server [--host H] [--port P] [--threads N]
    llamadiff serve [-m model.gguf] [--host H] [--port P] [--api-key KEY]   (the [server] extra)

Errors print one line (``llamadiff: error: ...``) and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional

from llamadiff.errors import LlamaDiffError
from llamadiff.convert import OUTTYPES

class _Parser(argparse.ArgumentParser):
    """argparse with llamadiff's error convention: one line naming the command, exit status 1,
    and for an unknown flag the closest one it meant."""

    def error(self, message: str):
        import difflib
        import re
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            flags = [o for action in self._actions for o in action.option_strings]
            parts = []
            for arg in unknown.group(1).split():
                name = arg.split("=", 1)[0]
                close = difflib.get_close_matches(name, flags, n=1, cutoff=0.6) if name.startswith("-") else []
                parts.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
            message = "unknown argument(s): " + ", ".join(parts)
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(1)


SHIPPED = ("block", "full")      # -m block / -m full: the tiny models shipped in the package


def _model_path(value: Optional[str]):
    """-m: a GGUF path, or "block" / "full" for a shipped model (None: the block one)."""
    from llamadiff.paths import default_model
    if value is None or value in SHIPPED:
        return default_model(value or "block")
    return value


def _add_model_args(p: argparse.ArgumentParser, n_ctx: int = 4096, n_ctx_help: str = "") -> None:
    p.add_argument("-m", "--model", default=None,
                   help="path of a GGUF model, or 'block' / 'full' for the tiny models shipped with llamadiff "
                        "(default: block; they know five small tasks, see 'llamadiff info')")
    p.add_argument("-c", "--n-ctx", type=int, default=n_ctx,
                   help=n_ctx_help or f"context size in tokens (default {n_ctx})")
    p.add_argument("-t", "--threads", type=int, default=None, help="CPU threads (default: the physical cores, one CPU left free: llamadiff._core.default_threads())")
    p.add_argument("-ngl", "--n-gpu-layers", type=int, default=0, help="layers offloaded to a GPU")
    p.add_argument("--chat-template", default=None, metavar="TEMPLATE",
                   help="how chat messages become a prompt: a Jinja file, Jinja text, or a llama.cpp built-in "
                        "format's name such as chatml (default: the model's tokenizer.chat_template)")


def _chat_template(value: Optional[str]) -> Optional[str]:
    """--chat-template: a file's text when it names a file, else the value itself."""
    if value is not None and os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as f:
                return f.read()
        except UnicodeDecodeError:
            raise LlamaDiffError(f"--chat-template {value}: the file is not UTF-8 text") from None
    return value


# the shipped models know five tasks, at these sizes (llamadiff.tasks); anything else is noise
def _shipped_hint() -> str:
    from llamadiff.tasks import KNOWN
    return (f"llamadiff: note: the shipped models know five small tasks only: {KNOWN}; other prompts give "
            "noise. Pass -m model.gguf for a real model.")

CHAT_HELP = "Ctrl-D or /exit to leave, Ctrl-C to interrupt an answer, /reset to clear the conversation, /help."

NO_CHAT_TEMPLATE = ("this model has no chat template (GGUF key tokenizer.chat_template): give a plain "
                    "prompt, or a template with --chat-template (a Jinja file, or a name such as chatml)")


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    from llamadiff.config import option_fields

    groups = {"generation": p.add_argument_group("generation"),
              "block": p.add_argument_group("block diffusion (SDAR, ...)"),
              "full": p.add_argument_group("full diffusion (LLaDA, Dream)"),
              "canvas": p.add_argument_group("canvas diffusion (DiffusionGemma)")}
    for f in option_fields():
        meta = f.metadata
        flags = meta["flags"] or ("--" + f.name.replace("_", "-"),)
        kwargs = dict(dest=f.name, help=meta["help"])
        if meta["cli"] == "flag":
            kwargs.update(action="store_true")
        elif meta["cli"] == "append":
            kwargs.update(action="append", default=None)
        else:
            kind = float if meta["bounds"] is not None else int if meta["minimum"] is not None else None
            kwargs.update(default=f.default)
            if kind is not None:
                kwargs.update(type=kind)
            if meta["choices"] is not None:
                kwargs.update(choices=list(meta["choices"]))
        groups[meta["group"]].add_argument(*flags, **kwargs)
    # cache: one option, a switch for block diffusion and a mode for full diffusion
    groups["generation"].add_argument("--no-cache", dest="cache", action="store_const", const=False, default=None,
                                      help="block diffusion: recompute prefix + block every step (reference behaviour)")
    groups["full"].add_argument("--cache", dest="cache", choices=["none", "prefix", "dual"],
                                help="none: exact, whole sequence every step (default); prefix / dual: Fast-dLLM caches")


def _version() -> str:
    import llamadiff

    return f"llamadiff {llamadiff.__version__} (llama.cpp {llamadiff.llama_cpp_version()})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llamadiff", description="Diffusion language models on llama.cpp.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = sub.choices          # name -> its parser (main() reports unknown flags through it)

    gen = sub.add_parser("generate", help="generate text from a prompt")
    _add_model_args(gen)
    gen.add_argument("prompt_text", nargs="?", default=None, metavar="PROMPT",
                     help="prompt text (or -p PROMPT)")
    gen.add_argument("-p", "--prompt", default=None, help="prompt text")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    out = gen.add_mutually_exclusive_group()
    out.add_argument("--stream", action="store_true", help="print each block as it is finalised")
    out.add_argument("--visual", action="store_true", help="show masks resolving, step by step")
    out.add_argument("--json", action="store_true", help="print one JSON object with text, tokens and stats")
    _add_generation_args(gen)

    chat = sub.add_parser("chat", help="multi-turn chat with the model's chat template")
    _add_model_args(chat)
    chat.add_argument("--system", default=None, help="system prompt")
    _add_generation_args(chat)

    info = sub.add_parser("info", help="describe a GGUF model")
    info.add_argument("model", nargs="?", default=None,
                      help="path of a GGUF model, or 'block' / 'full' for a shipped model (default: block)")
    info.add_argument("--json", action="store_true",
                      help="one JSON object, numbers as numbers (for scripts)")

    conv = sub.add_parser("convert", help="convert a diffusion Hugging Face checkpoint (SDAR, SDAR-MoE, "
                                         "TraDo, Fast-dLLM v2, LLaDA2.0 / 2.1, Nemotron-Labs-Diffusion, "
                                         "Stable-DiffCoder, DiffusionGemma) to GGUF")
    conv.add_argument("hf_dir", help="checkpoint directory (config.json, safetensors, tokenizer files)")
    conv.add_argument("-o", "--outfile", required=True, help="output .gguf path")
    conv.add_argument("--outtype", default="f16", choices=OUTTYPES,
                      help="weight type of the GGUF (default f16; f32 keeps every bit, q8_0 halves the size)")
    conv.add_argument("--block-length", type=int, default=None,
                      help="trained block length to record (default: config.json, else the family's)")
    conv.add_argument("--family", default=None,
                      help="the checkpoint format by name where two share an architectures name "
                           "(LLaDA2.1 beside LLaDA2.0; default: told from the checkpoint)")
    conv.add_argument("--fuse", action="store_true",
                      help="write q/k/v and gate/up as one matrix each (fewer, wider products per step: "
                           "faster on GPUs; the same results; see 'llamadiff fuse')")

    fuse = sub.add_parser("fuse", help="rewrite a GGUF with q/k/v and gate/up fused into one matrix each "
                                      "(qwen3, qwen2, llama, mistral3, qwen3moe, bailingmoe2)")
    fuse.add_argument("model", help="input .gguf")
    fuse.add_argument("-o", "--outfile", required=True, help="output .gguf path (may be the input)")

    srv = sub.add_parser("rpc-server", help="serve this machine's CPU to Generators elsewhere (ggml RPC)")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; the protocol "
                                                          "is unauthenticated: trusted networks only)")
    srv.add_argument("--port", type=int, default=50052, help="TCP port (default 50052)")
    srv.add_argument("--threads", type=int, default=None, help="CPU threads (default: the library's)")

    web = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (needs the [server] extra)")
    _add_model_args(web, 2048, "most tokens of one request, prompt + generation (default 2048); the KV "
                               "cache holds n-parallel x n-ctx positions")
    web.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    web.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    web.add_argument("--api-key", default=None,
                     help="require 'Authorization: Bearer KEY' (use one whenever the address is not local)")
    web.add_argument("--n-parallel", type=int, default=16, help="requests decoded together (default 16)")
    web.add_argument("--max-queue", type=int, default=64,
                     help="requests that may wait for a slot; more are answered 503 (default 64)")
    web.add_argument("--model-name", default=None, help="the model's id in the API (default: the file name)")
    web.add_argument("--max-tokens", type=int, default=1024, dest="max_tokens_cap",
                     help="the most tokens one request may ask for (default 1024; more is a 400)")
    web.add_argument("--max-steps", type=int, default=1024,
                     help="the most denoising steps one request may ask for (default 1024; more is a 400)")
    web.add_argument("--max-request-bytes", type=int, default=None,
                     help="the largest request body; larger ones get a 413 before they are read (default: "
                          "64 KiB + 64 bytes per token of --n-ctx)")
    web.add_argument("--read-timeout", type=float, default=10.0,
                     help="seconds a request's headers, and then its body, may take to arrive; slower ones "
                          "get a 408 and are closed (default 10)")
    web.add_argument("--drain-seconds", type=float, default=5.0,
                     help="at SIGINT / SIGTERM, how long queued and running requests may take to finish "
                          "before they are cancelled, each with the documented error (default 5)")
    web.add_argument("--max-block-length", type=int, default=None,
                     help="largest block_length a request may ask for (default: 64, or the model's trained one)")

    bench = sub.add_parser("bench", help="time block diffusion with and without the KV cache on a random "
                                        "103M-parameter model (--quick: about 2 minutes on 2 idle cores)")
    bench.add_argument("--quick", action="store_true",
                       help="one no-cache run per block length, two cached (about 2 minutes on 2 idle cores; "
                            "the full run about 25)")
    bench.add_argument("--blocks", default="4,8,16",
                       help="block lengths to time, comma-separated (default 4,8,16)")
    bench.add_argument("-t", "--threads", type=int, default=None,
                       help="CPU threads (default: the library's, the physical cores with one CPU left free)")
    bench.add_argument("--out", default=None, help="append results to this markdown file")
    return parser


def _generation_options(args) -> dict:
    from llamadiff.config import option_fields

    opts = {f.name: getattr(args, f.name) for f in option_fields()}
    opts["cache"] = args.cache
    return opts


def _generator(args):
    from llamadiff.generator import Generator

    return Generator(_model_path(args.model), n_ctx=args.n_ctx, n_threads=args.threads,
                     n_gpu_layers=args.n_gpu_layers, chat_template=_chat_template(args.chat_template))


def _shipped(args) -> bool:
    return args.model is None or args.model in SHIPPED


class _Visual:
    """Redraws the generated region after every denoising step, masks shown as '░'."""

    MASK = "░"

    def __init__(self, model, n_prompt: int, n_new: int, out):
        self.model = model
        self.n_prompt = n_prompt
        self.tokens = {}
        self.n_new = n_new
        self.out = out
        self.tty = out.isatty()
        self.eog = set(model.eog_token_ids)

    def __call__(self, info) -> None:
        # up to the end of the active block: what is decided so far, masks where nothing is yet
        self.end = info.block_end
        if info.step == 0:
            self._draw(f"[block {info.block_index} start]")    # before this step's commits
        for pos, tok in zip(info.positions, info.tokens):
            self.tokens[pos] = tok
        self._draw(f"[block {info.block_index} step {info.step}]")

    def _draw(self, label: str) -> None:
        pieces = []
        for pos in range(self.n_prompt, min(self.n_prompt + self.n_new, self.end)):
            tok = self.tokens.get(pos)
            if tok is None:
                pieces.append(self.MASK)
            elif tok in self.eog:
                break                    # the end of generation: nothing after it is shown
            else:
                pieces.append(self.model.token_to_piece(tok, special=True).replace("\n", "⏎"))
        line = f"{label} " + "".join(pieces)
        if self.tty:
            self.out.write("\r\x1b[2K" + line[-(os.get_terminal_size(self.out.fileno()).columns - 1):])
            self.out.flush()
            time.sleep(0.1)              # slow enough for an eye to follow the masks resolving
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def finish(self) -> None:
        if self.tty:
            self.out.write("\n")


def cmd_generate(args) -> int:
    if args.prompt is not None and args.prompt_text is not None:
        raise LlamaDiffError("give the prompt once: as PROMPT or as -p PROMPT")
    args.prompt = args.prompt if args.prompt is not None else args.prompt_text
    if args.prompt is None:
        raise LlamaDiffError("no prompt: llamadiff generate \"sort 93715=\" (or -p PROMPT)")
    gen = _generator(args)
    if args.chat and gen.chat_template is None:
        raise LlamaDiffError(NO_CHAT_TEMPLATE)
    opts = _generation_options(args)
    if args.stream:
        for chunk in gen.stream(args.prompt, chat=args.chat, **opts):
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if not args.json:
            return 0
        result = gen.generate(args.prompt, chat=args.chat, **opts)
    else:
        visual = None
        if args.visual:
            n_prompt = len(gen.prompt_tokens(args.prompt, chat=args.chat))
            n_new = args.max_new_tokens or gen.default_max_new_tokens(n_prompt)
            visual = _Visual(gen.model, n_prompt, n_new, sys.stderr if args.json else sys.stdout)
            opts["callback"] = visual
        result = gen.generate(args.prompt, chat=args.chat, **opts)
        if visual is not None:
            visual.finish()
        if not args.json:
            print(result.text)
        if _shipped(args) and (not result.text.strip() or result.stop_reason == "length"):
            print(_shipped_hint(), file=sys.stderr)    # an empty or run-on answer from a shipped model
    if args.json:
        print(json.dumps({"text": result.text, "tokens": result.tokens, "stop_reason": result.stop_reason,
                          "prompt_tokens": result.prompt_tokens, "stats": result.stats}))
    return 0


def cmd_chat(args) -> int:
    gen = _generator(args)
    if gen.chat_template is None:
        raise LlamaDiffError(NO_CHAT_TEMPLATE)
    opts = _generation_options(args)
    history = [{"role": "system", "content": args.system}] if args.system else []
    print("llamadiff chat: " + CHAT_HELP)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            history = history[:1] if args.system else []
            continue
        if line.strip() in ("/help", "/?"):
            print(CHAT_HELP)
            continue
        if line.strip().startswith("/") and " " not in line.strip():
            print(f"unknown command {line.strip()}; {CHAT_HELP}")
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        reply = ""
        for chunk in gen.stream(history, **opts):
            sys.stdout.write(chunk.text)
            sys.stdout.flush()
            reply += chunk.text
            if chunk.stop_reason == "interrupted":
                sys.stdout.write(" [interrupted]")
        sys.stdout.write("\n")
        if _shipped(args) and not reply.strip():
            print(_shipped_hint(), file=sys.stderr)
        history.append({"role": "assistant", "content": reply})


def cmd_info(args) -> int:
    from llamadiff._core import Model
    from llamadiff.families.base import model_flag, model_int

    shipped = _shipped(args)
    args.model = _model_path(args.model)
    model = Model(args.model)        # memory-mapped: cheap even for large files
    mask = model.mask_token_id
    meta = model.metadata
    problem = None if model.is_diffusion else model.block_diffusion_problem
    params = model.n_params
    size = f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"
    info = {
        "path": os.path.abspath(args.model),
        "architecture": model.architecture,
        "family": model.family,
        "description": f"{model.architecture}, {size} parameters, {model.file_type}",
        "file_type": model.file_type,
        "n_vocab": model.n_vocab,
        "n_ctx_train": model.n_ctx_train,
        "n_layer": model.n_layer,
        "n_embd": model.n_embd,
        "n_head": model.n_head,
        "n_head_kv": model.n_head_kv,
        "n_params": model.n_params,
        "weights_bytes": model.size,
        "mask_token": None if mask is None else {"id": mask, "text": model.token_to_piece(mask)},
        "eog_tokens": {t: model.token_to_piece(t) for t in model.eog_token_ids},
        "block_length": model_int(model, "diffusion.block_length"),
        "shift_logits": None if meta.get("diffusion.shift_logits") is None else
        model_flag(model, "diffusion.shift_logits", False),
        "chat_template": model.chat_template,
        "file_size": os.path.getsize(args.model),
    }
    # why a causal model with a mask token cannot run block diffusion (null: it can; left out of
    # the text form then)
    info["block_diffusion_problem"] = problem
    if shipped:
        from llamadiff.tasks import KNOWN
        info["knows"] = KNOWN
    if args.json:
        print(json.dumps(info))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if value is None and key == "block_diffusion_problem":
            continue
        if key == "chat_template" and value:
            value = value if len(value) < 200 else value[:200] + " ..."
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_bench(args) -> int:
    from llamadiff import bench

    print(f"llamadiff bench: {'about 2' if args.quick else 'about 25'} minutes on 2 idle cores; one line per "
          "run as it finishes", file=sys.stderr, flush=True)
    argv = (["--quick"] if args.quick else []) + ["--blocks", args.blocks]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    if args.out:
        argv += ["--out", args.out]
    return bench.main(argv)


def cmd_convert(args) -> int:
    from llamadiff.convert import convert

    print(convert(args.hf_dir, args.outfile, outtype=args.outtype, block_length=args.block_length,
                  fuse=args.fuse, family=args.family))
    return 0


def cmd_fuse(args) -> int:
    from llamadiff.fuse import fuse_gguf

    done = fuse_gguf(args.model, args.outfile)
    kept = f"; left unfused (parts of different types): {', '.join(done['kept'])}" if done["kept"] else ""
    print(f"{args.outfile}: {done['fused']} fused tensors ({done['architecture']}){kept}")
    return 0


def cmd_rpc_server(args) -> int:
    from llamadiff import rpc

    cmd = [str(rpc.server_path()), "-H", args.host, "-p", str(args.port)]
    if args.threads:
        cmd += ["-t", str(args.threads)]
    print(f"llamadiff: serving on {args.host}:{args.port} (Ctrl-C to stop); use it with "
          f"Generator(..., rpc_servers=['{args.host}:{args.port}'])", file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd)


def cmd_serve(args) -> int:
    from llamadiff.server import serve    # ImportError names the [server] extra

    serve(args.model, host=args.host, port=args.port, api_key=args.api_key, n_parallel=args.n_parallel,
          max_queue=args.max_queue, n_ctx=args.n_ctx, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers,
          model_name=args.model_name, max_block_length=args.max_block_length,
          chat_template=_chat_template(args.chat_template), drain_seconds=args.drain_seconds,
          max_tokens=args.max_tokens_cap, max_steps=args.max_steps, max_request_bytes=args.max_request_bytes,
          read_timeout=args.read_timeout)
    return 0


COMMANDS = {"generate": cmd_generate, "chat": cmd_chat, "info": cmd_info, "bench": cmd_bench,
            "convert": cmd_convert, "fuse": cmd_fuse, "rpc-server": cmd_rpc_server, "serve": cmd_serve}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"llamadiff: warning: {message}", file=sys.stderr)      # one line, as errors are


def main(argv: Optional[list] = None) -> int:
    import warnings
    warnings.showwarning = _show_warning
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:                              # named by the subcommand, against its own flags
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command](args)
    except (LlamaDiffError, OSError, ValueError, TypeError, RuntimeError, ImportError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"llamadiff: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("llamadiff: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

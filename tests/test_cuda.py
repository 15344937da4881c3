"""CUDA: the GPU sampler's source compiles with nvcc; sampler selection and its errors; the
"backend" route (sampling inside llama.cpp's graph, which also runs on the CPU backend);
and, on a machine with a GPU and a CUDA build, GPU-vs-CPU agreement of the samplers and of
end-to-end generation (skipped cleanly elsewhere)."""

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import llamadiff
from llamadiff import Context, Generator, testing
from llamadiff import cuda
from llamadiff._sampling import CpuRowSampler, sample_logits
from llamadiff.errors import CudaUnavailableError
from llamadiff.samplers import make_row_sampler

from numpy_reference import block_diffusion_generate

ROOT = Path(__file__).resolve().parent.parent
EXACT = dict(type_k="f32", type_v="f32", flash_attn=False)
MASK = testing.byte_vocab().mask_id
PROMPT = [104, 101, 108, 108, 111, 32, 119, 111]


def _nvcc():
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def _default_archs():
    text = (ROOT / "setup.py").read_text()
    return re.search(r'^DEFAULT_CUDA_ARCHS = "([0-9;]+)"', text, re.M).group(1).split(";")


HAS_DEVICE = cuda.is_built() and cuda.device_count() > 0


def cuda_skipif(condition, reason):
    """A skip that depends on CUDA (device or toolkit): the only kind a CPU-only machine may
    take (tests/conftest.py, LLAMADIFF_STRICT_SKIPS)."""
    def mark(test):
        return pytest.mark.cuda(pytest.mark.skipif(condition, reason=reason)(test))
    return mark


needs_gpu = cuda_skipif(not HAS_DEVICE, reason="needs a CUDA build of llamadiff and a CUDA device"
                        f" (built: {cuda.is_built()}, devices: {cuda.device_count()})")
without_gpu = cuda_skipif(HAS_DEVICE, reason="checks the behaviour without a usable CUDA device")


# ------------------------------------------------------------------- compiles everywhere nvcc is


@cuda_skipif(_nvcc() is None, reason="nvcc not found")
def test_nvcc_compiles_sampler_for_default_archs(tmp_path):
    """sampler.cu compiles (machine code for H100's sm_90 and every default architecture, PTX
    for the newest), whether or not a GPU is present."""
    archs = sorted(set(_default_archs()) | {"90"}, key=int)
    cmd = [_nvcc(), "-c", str(ROOT / "llamadiff" / "cuda" / "sampler.cu"), "-o", str(tmp_path / "s.o"),
           "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-Werror", "all-warnings"]
    for a in archs:
        cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    cmd += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "s.o").stat().st_size > 0
    cuobjdump = shutil.which("cuobjdump") or os.path.join(os.path.dirname(os.path.realpath(_nvcc())), "cuobjdump")
    if os.path.isfile(cuobjdump):
        listing = subprocess.run([cuobjdump, "--list-elf", str(tmp_path / "s.o")], capture_output=True, text=True).stdout
        for a in archs:
            assert f"sm_{a}" in listing, listing


def test_default_archs_documented():
    assert "90" in _default_archs()
    assert ";".join(_default_archs()) in (ROOT / "docs" / "BUILDING.md").read_text()


# ------------------------------------------------------------------- selection and errors


def test_module_surface():
    assert isinstance(cuda.is_built(), bool)
    assert isinstance(cuda.device_count(), int) and cuda.device_count() >= 0
    assert os.path.isfile(os.path.join(cuda.source_dir(), "sampler.cu"))
    assert os.path.isfile(os.path.join(cuda.source_dir(), "sampler.h"))
    if not cuda.is_built():
        assert cuda.device_count() == 0 and cuda.runtime_version() == 0
        with pytest.raises(CudaUnavailableError, match="LLAMADIFF_CUDA=1"):
            cuda.CudaRowSampler


def test_cpu_sampler_is_always_available(qwen3_model):
    with Generator(qwen3_model, n_ctx=128, n_threads=2, sampler="cpu") as g:
        out = g.generate(PROMPT, max_new_tokens=8, block_length=4, stop=[])
        assert out.stats["sampler"] == "cpu" and len(out.tokens) == 8


@without_gpu
def test_cuda_sampler_without_device_is_a_clear_error(qwen3_model):
    with pytest.raises(CudaUnavailableError) as info:
        Generator(qwen3_model, n_ctx=128, sampler="cuda")
    assert isinstance(info.value, RuntimeError)
    assert ("LLAMADIFF_CUDA=1" in str(info.value)) != cuda.is_built()
    assert "no CUDA device" in str(info.value) or not cuda.is_built()


@without_gpu
def test_auto_falls_back_to_cpu(qwen3_model, caplog):
    with caplog.at_level(logging.WARNING, logger="llamadiff"):
        g = Generator(qwen3_model, n_ctx=128, n_threads=2)
    # the CPU sampler, on the rows where the CPU back end computed them
    assert isinstance(g.sampler, CpuRowSampler) and g.sampler.in_place
    # no device is not worth a warning (a warning is for a device whose CUDA start failed)
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)
    g.close()


def test_unknown_sampler():
    with pytest.raises(ValueError, match="unknown sampler"):
        make_row_sampler("tpu")
    s = CpuRowSampler(2)
    assert make_row_sampler(s) is s


def test_cpu_margin_matches_numpy():
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(6, 5000)) * 3).astype(np.float32)
    logits[2, 17] = logits[2].max()          # a tie for the top value: margin 0
    for kwargs in ({}, {"temperature": 0.7}, {"top_k": 40, "temperature": 1.3}, {"top_p": 0.9}):
        t = kwargs.get("temperature", 0.0) or 1.0
        tokens, probs, ents, margins = sample_logits(logits, skip_token=5, with_margin=True, **kwargs)
        for r in range(6):
            x = np.delete(logits[r].astype(np.float64), 5) / t
            srt = np.sort(x)[::-1]
            if "top_k" in kwargs:
                srt = srt[:kwargs["top_k"]]
            p = np.exp(srt - srt[0])
            p /= p.sum()
            if "top_p" in kwargs:
                keep = np.concatenate([[True], np.cumsum(p)[:-1] < kwargs["top_p"]])
                p = p[keep] / p[keep].sum()
            want = p[0] - (p[1] if len(p) > 1 else 0.0)
            assert abs(margins[r] - want) <= 1e-5 * max(p[0], 1e-6), (kwargs, r)


# ------------------------------------------------------------------- the backend route (any backend)


@pytest.mark.parametrize("strategy,extra", [("sequential", {}), ("low_confidence_static", {}),
                                            ("low_confidence_dynamic", {"threshold": 0.05}),
                                            ("entropy_bounded", {"eb_gamma": 11.0})])
@pytest.mark.parametrize("block", [1, 4, 8])
def test_backend_route_gives_the_cpu_tokens(qwen3_model, strategy, extra, block):
    opts = dict(max_new_tokens=16, block_length=block, steps=max(1, block // 2), strategy=strategy,
                stop=[], **extra)
    outs = {}
    for name in ("cpu", "backend"):
        with Generator(qwen3_model, n_ctx=256, n_threads=2, sampler=name, **EXACT) as g:
            outs[name] = (g.generate(PROMPT, **opts).tokens, g.generate(PROMPT[:5], cache=False, **opts).tokens)
            assert g.generate(PROMPT, max_new_tokens=4, stop=[]).stats["sampler"] == name
    assert outs["backend"] == outs["cpu"]


def test_backend_route_row_statistics(qwen3_model):
    """p(x0) and entropy from the graph equal the CPU sampler's on the same logits."""
    from llamadiff._backend import BackendRowSampler
    tokens = PROMPT + [MASK] * 8
    with Context(qwen3_model, n_ctx=64, n_threads=2, causal=False, **EXACT) as plain, \
            Context(qwen3_model, n_ctx=64, n_threads=2, causal=False, **EXACT) as inside:
        sampler = BackendRowSampler(MASK)
        sampler.attach(inside)
        want = [i >= len(PROMPT) - 2 for i in range(len(tokens))]
        plain.decode(tokens, logits=want)
        inside.decode(tokens, logits=want)
        n = sum(want)
        ref_t, ref_p, ref_h = sample_logits(np.array(plain.logits), skip_token=MASK)
        t, p, h = sampler.read_rows(n)
        np.testing.assert_array_equal(t, ref_t)
        np.testing.assert_allclose(p, ref_p, rtol=1e-5)
        np.testing.assert_allclose(h, ref_h, rtol=1e-5)
        assert MASK not in t
        sampler.detach()


def test_backend_route_is_greedy_only(qwen3_model):
    with Generator(qwen3_model, n_ctx=128, n_threads=2, sampler="backend") as g:
        with pytest.raises(ValueError, match="greedy"):
            g.generate(PROMPT, max_new_tokens=4, temperature=0.8)
        with pytest.raises(ValueError, match="greedy"):
            g.generate(PROMPT, max_new_tokens=4, top_k=5)
        assert len(g.generate(PROMPT, max_new_tokens=4, stop=[]).tokens) == 4


# ------------------------------------------------------------------- GPU (skipped without one)


def _rel(a, b):
    return np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)) / np.maximum(np.abs(np.asarray(b, np.float64)), 1e-30)


@needs_gpu
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 8, 16, 31, 32, 64])
def test_gpu_matches_cpu_greedy(rows):
    rng = np.random.default_rng(rows)
    logits = (rng.normal(size=(rows, 151936)) * 3).astype(np.float32)
    skip = 151669
    logits[:, skip] += 100.0                       # the mask token must never win
    gpu = cuda.CudaRowSampler()
    cpu = CpuRowSampler(2)
    g = gpu.sample_logits(logits, skip_token=skip)
    c = cpu.sample_logits(logits, skip_token=skip)
    np.testing.assert_array_equal(g[0], c[0])
    assert (g[0] != skip).all()
    assert _rel(g[1], c[1]).max() <= 1e-5
    assert _rel(g[2], c[2]).max() <= 1e-5
    assert np.abs(g[3] - c[3]).max() <= 1e-5 * np.abs(c[1]).max()


@needs_gpu
@pytest.mark.parametrize("kwargs", [{"temperature": 0.7}, {"temperature": 1.0, "top_k": 50},
                                    {"temperature": 1.0, "top_p": 0.9}, {"temperature": 0.8, "top_k": 200, "top_p": 0.7},
                                    {"top_k": 20}, {"top_p": 0.5}])
def test_gpu_matches_cpu_sampling(kwargs):
    """Same seed, same counters: the same tokens as the CPU (up to rounding at boundaries)."""
    rng = np.random.default_rng(7)
    logits = (rng.normal(size=(64, 151936)) * 2).astype(np.float32)
    counters = np.arange(1000, 1064, dtype=np.uint64)
    g = cuda.CudaRowSampler().sample_logits(logits, seed=123, counters=counters, skip_token=3, **kwargs)
    c = CpuRowSampler(2).sample_logits(logits, seed=123, counters=counters, skip_token=3, **kwargs)
    assert (g[0] == c[0]).mean() >= 62 / 64, kwargs
    same = g[0] == c[0]
    assert _rel(g[1][same], c[1][same]).max() <= 1e-4
    assert _rel(g[2], c[2]).max() <= 1e-4


@needs_gpu
def test_gpu_sampling_distribution_chi_square():
    base = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], dtype=np.float32)
    n = 20000
    logits = np.tile(base, (n, 1))
    gpu = cuda.CudaRowSampler()
    for kwargs, keep in (({"temperature": 0.7}, 8), ({"temperature": 0.7, "top_k": 5}, 5)):
        tokens, probs, _, _ = gpu.sample_logits(logits, seed=11, counters=np.arange(n), **kwargs)
        p = np.exp(base[:keep] / 0.7)
        p /= p.sum()
        counts = np.bincount(tokens, minlength=8)
        assert counts[keep:].sum() == 0
        chi2 = float(((counts[:keep] - n * p) ** 2 / (n * p)).sum())
        assert chi2 < 26.0           # chi-square, <= 7 degrees of freedom, p ~ 0.0005
        np.testing.assert_allclose(probs, p[tokens], rtol=1e-5)


@needs_gpu
@pytest.mark.parametrize("sampler", ["cuda", "backend"])
@pytest.mark.parametrize("strategy,extra", [("low_confidence_static", {}), ("entropy_bounded", {"eb_gamma": 11.0})])
@pytest.mark.parametrize("block", [2, 4, 8])
@pytest.mark.parametrize("fixed", [None, False])
def test_gpu_generation_matches_reference(qwen3_model, qwen3_path, sampler, strategy, extra, block, fixed):
    """Greedy generation on the GPU (layers offloaded when ggml has CUDA) gives the tokens of
    the independent NumPy loop, like the CPU build does: with one step shape (the default with
    offloaded layers, for CUDA-graph replay) and with the minimal steps."""
    from llamadiff.testing import read_model
    steps = max(1, block // 2)
    ref = block_diffusion_generate(read_model(qwen3_path), PROMPT, 12, block, steps, strategy, MASK, **extra)
    n_gpu_layers = -1 if cuda.ggml_cuda_built() else 0
    with Generator(qwen3_path, n_ctx=256, n_gpu_layers=n_gpu_layers, sampler=sampler, **EXACT) as g:
        out = g.generate(PROMPT, max_new_tokens=12, block_length=block, steps=steps, strategy=strategy,
                         stop=[], fixed_step_shape=fixed, **extra)
        if fixed is None and n_gpu_layers and steps > 1:
            # on by default with the layers on the GPU: every later step decodes two blocks (with
            # one step per block every step is a first step, which decodes both anyway)
            plain = g.generate(PROMPT, max_new_tokens=12, block_length=block, steps=steps, strategy=strategy,
                               stop=[], fixed_step_shape=False, **extra)
            assert out.stats["decode_tokens"] > plain.stats["decode_tokens"]
    assert out.stats["sampler"] == sampler
    assert out.tokens == ref


@needs_gpu
def test_fixed_step_shape_and_batches_on_the_gpu(qwen3_path):
    """One step shape is the default for one sequence on the GPU, not for a batch (the pinned
    ggml-cuda faults replaying a several-sequence step: 'an illegal instruction was
    encountered', an abort, seen on an H200); asking for it there is a clear error."""
    with Generator(qwen3_path, n_ctx=256, n_gpu_layers=-1, **EXACT) as g:
        prompts = [PROMPT, PROMPT[:3], PROMPT[2:]]
        batch = g.generate(prompts, max_new_tokens=12, block_length=4, steps=4, stop=[], n_parallel=3)
        plain = g.generate(prompts, max_new_tokens=12, block_length=4, steps=4, stop=[], n_parallel=3,
                           fixed_step_shape=False)
        assert [r.stats["decode_tokens"] for r in batch] == [r.stats["decode_tokens"] for r in plain]
        with pytest.raises(ValueError, match="one sequence per context on a GPU"):
            g.generate(prompts, max_new_tokens=12, block_length=4, steps=4, stop=[], n_parallel=3,
                       fixed_step_shape=True)


@needs_gpu
@pytest.mark.parametrize("options", [dict(), dict(temperature=0.8, top_k=40, seed=3),
                                     dict(strategy="entropy_bounded", eb_gamma=2.0)])
def test_device_sampling_on_the_gpu(qwen3_path, options):
    """sampler="device" with the layers on the GPU: the CUDA sampler reads llama.cpp's device
    logits in place (nothing of them reaches the host) and gives the host route's tokens,
    alone and batched."""
    n_gpu_layers = -1 if cuda.ggml_cuda_built() else 0
    prompts = [PROMPT, PROMPT[:3], PROMPT[2:]]
    runs = {}
    for sampler in ("cuda", "device"):
        with Generator(qwen3_path, n_ctx=256, n_gpu_layers=n_gpu_layers, sampler=sampler, **EXACT) as g:
            alone = g.generate(PROMPT, max_new_tokens=12, block_length=4, stop=[], fixed_step_shape=False,
                               **options)
            batch = g.generate(prompts, max_new_tokens=12, block_length=4, stop=[], n_parallel=3, **options)
            runs[sampler] = (alone.tokens, [r.tokens for r in batch])
            if sampler == "device" and n_gpu_layers:
                assert g.sampler.reads_device and alone.stats["logits_to_host_bytes"] == 0
                assert batch[0].stats["batch"]["logits_to_host_bytes"] == 0
    assert runs["device"] == runs["cuda"]


@needs_gpu
@pytest.mark.parametrize("options", [dict(cfg_scale=1.5), dict(temperature=1.0, add_gumbel_noise=True, seed=8),
                                     dict(cfg_scale=1.0, temperature=1.0, add_gumbel_noise=True, seed=9),
                                     dict(cache="dual", parallel="threshold")])
def test_full_diffusion_device_sampling_on_the_gpu(llada_path, options):
    """Guidance (the guided rows formed on the device) and LLaDA's Gumbel mode (p(x0) under the
    plain softmax, from the sampler) on device logits: the host route's tokens."""
    n_gpu_layers = -1 if cuda.ggml_cuda_built() else 0
    runs = {}
    for sampler in ("cuda", "device"):
        with Generator(llada_path, n_ctx=256, n_gpu_layers=n_gpu_layers, sampler=sampler, **EXACT) as g:
            out = g.generate(["one", "two three"], max_new_tokens=16, steps=16, block_length=8, stop=[], **options)
            runs[sampler] = [r.tokens for r in out]
    assert runs["device"] == runs["cuda"]


REPLAY_CHILD = r"""
import sys
from llamadiff import Generator
path, n = sys.argv[1], int(sys.argv[2])
prompts = [[5 + i, 6, 7, 8, 9, 10, 11, 12] for i in range(n)]
with Generator(path, n_ctx=512, n_gpu_layers=-1, type_k="f32", type_v="f32", flash_attn=False) as g:
    out = g.generate(prompts, max_new_tokens=64, block_length=4, stop=[], n_parallel=n, fixed_step_shape=True)
    print("TOKENS", [r.tokens for r in out], "REUSED", out[0].stats["batch"]["graphs_reused"], flush=True)
"""


@needs_gpu
@pytest.mark.parametrize("n", [2, 3, 16])
def test_batched_step_graph_replay(qwen3_path, n):
    """The fault that keeps one step shape off for batches on a GPU: several sequences with
    fixed_step_shape=True (LLAMADIFF_BATCH_GRAPH_REPLAY=1 lifts the refusal), in a child process
    (the fault aborts it). Reproduced, it is an expected failure with the child's last words;
    once a fix holds, the replayed steps must give the tokens of a run with CUDA graphs off."""
    if not cuda.ggml_cuda_built():
        pytest.skip("needs ggml's CUDA back end (layers on the GPU)")
    runs = {}
    for name, extra in (("replay", {}), ("no graphs", {"GGML_CUDA_DISABLE_GRAPHS": "1"})):
        env = dict(os.environ, LLAMADIFF_BATCH_GRAPH_REPLAY="1", **extra)
        proc = subprocess.run([sys.executable, "-c", REPLAY_CHILD, str(qwen3_path), str(n)], env=env,
                              capture_output=True, text=True, timeout=300)
        runs[name] = proc
    assert runs["no graphs"].returncode == 0, runs["no graphs"].stderr[-2000:]
    if runs["replay"].returncode != 0:
        pytest.xfail(f"reproduced with {n} sequences (exit {runs['replay'].returncode}): "
                     + " | ".join(runs["replay"].stderr.strip().splitlines()[-3:]))
    tokens = lambda p: p.stdout.split("TOKENS", 1)[1].split("REUSED")[0]
    assert tokens(runs["replay"]) == tokens(runs["no graphs"])


def test_the_gpu_sampler_extension_cythonizes(tmp_path):
    """llamadiff/cuda/_sampler.pyx compiles only in CUDA builds; Cython's check of it (GIL
    rules, types) runs here on every machine, so a CPU-only CI catches what would break them."""
    cythonize = pytest.importorskip("Cython.Build").cythonize
    src = tmp_path / "llamadiff" / "cuda"
    src.mkdir(parents=True)
    # the source from the checkout (an installed wheel holds no .pyx of llamadiff.cuda), the
    # declarations it cimports from the installed package (the ones its build used)
    shutil.copy(ROOT / "llamadiff" / "cuda" / "_sampler.pyx", src / "_sampler.pyx")
    cythonize([str(src / "_sampler.pyx")], include_path=llamadiff.get_include(), quiet=True,
              compiler_directives={"language_level": 3}, force=True)
    assert (src / "_sampler.cpp").stat().st_size > 10000

"""Vulkan (ggml's Vulkan back end: AMD, Intel, mobile and NVIDIA GPUs; Mesa's software driver
lavapipe on a machine without a GPU). With a build that has it (LLAMADIFF_VULKAN=1) and a
Vulkan device: the same greedy tokens as the CPU back end for block and full diffusion on F32
models, logits within rounding on quantized (Q8_0, Q4_K_M) models; partial offload. Skipped cleanly elsewhere;
scripts/vulkan_check.sh installs what it needs, builds and runs these."""

import numpy as np
import pytest

import llamadiff
from llamadiff import Context, Generator, Model, quantize, testing

pytestmark = pytest.mark.vulkan

VULKAN = [d for d in llamadiff.devices() if d["name"].startswith("Vulkan")]
needs_vulkan = pytest.mark.skipif(not VULKAN, reason="no Vulkan device (a build without "
                                  "LLAMADIFF_VULKAN=1, or no Vulkan driver)")
EXACT = dict(type_k="f32", type_v="f32", flash_attn=False, n_threads=2)
PROMPT = [104, 101, 108, 108, 111, 32, 119]
# K-quants need rows that are whole 256-value super-blocks: a shape whose every matrix has them
QUANT_SHAPE = testing.ModelShape(n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_ff=512, n_layer=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("vulkan")
    out = {}
    for arch in ("qwen3", "llada"):
        out[arch] = testing.write_model(d / f"{arch}.gguf", arch, seed=2)
        f32 = testing.write_model(d / f"{arch}-big.gguf", arch, seed=2, shape=QUANT_SHAPE)
        out[f"{arch}-f32"] = f32
        for ftype in ("q8_0", "q4_k_m"):
            out[f"{arch}-{ftype}"] = quantize(f32, d / f"{arch}-{ftype}.gguf", ftype)
    return out


def _generate(path, n_gpu_layers, **opts):
    with Generator(path, n_ctx=256, n_gpu_layers=n_gpu_layers, **EXACT) as gen:
        return gen.generate(PROMPT, max_new_tokens=16, stop=[], **opts).tokens


@needs_vulkan
def test_vulkan_device_is_listed():
    assert all(d["kind"] in ("gpu", "igpu", "cpu") for d in VULKAN)
    assert llamadiff.supports_gpu_offload()


@needs_vulkan
@pytest.mark.parametrize("arch", ["qwen3", "llada"])
def test_logits_close_to_cpu(models, arch):
    tokens = list(range(30, 62))
    out = []
    for layers in (0, -1):
        with Context(Model(models[arch], n_gpu_layers=layers), n_ctx=64, causal=arch != "llada",
                     type_k="f32", type_v="f32", flash_attn=False) as ctx:
            ctx.decode(tokens)
            out.append(np.array(ctx.logits))
    cpu, gpu = out
    assert np.max(np.abs(gpu - cpu)) / np.max(np.abs(cpu)) <= 1e-3
    assert (gpu.argmax(axis=1) == cpu.argmax(axis=1)).all()


@needs_vulkan
@pytest.mark.parametrize("arch,opts", [("qwen3", dict(block_length=4, steps=4)),
                                       ("qwen3", dict(block_length=8, steps=4, cache=False)),
                                       ("llada", dict(block_length=8, steps=16)),
                                       ("llada", dict(block_length=8, steps=16, cache="dual"))])
def test_greedy_tokens_equal_cpu(models, arch, opts):
    assert _generate(models[arch], -1, **opts) == _generate(models[arch], 0, **opts)


@needs_vulkan
def test_partial_offload(models):
    """One of two layers on the device, the rest (and the output) on the CPU."""
    opts = dict(block_length=4, steps=4)
    assert _generate(models["qwen3"], 1, **opts) == _generate(models["qwen3"], 0, **opts)


@needs_vulkan
@pytest.mark.parametrize("arch", ["qwen3", "llada"])
def test_f32_model_gives_the_cpu_tokens(models, arch):
    opts = dict(block_length=4, steps=4) if arch == "qwen3" else dict(block_length=8, steps=16)
    model = models[f"{arch}-f32"]
    assert _generate(model, -1, **opts) == _generate(model, 0, **opts)


@needs_vulkan
@pytest.mark.parametrize("model", ["qwen3-q8_0", "qwen3-q4_k_m", "llada-q8_0", "llada-q4_k_m"])
@pytest.mark.parametrize("tokens", [PROMPT, list(range(40, 48)), list(range(3, 19))])
def test_quantized_logits_agree_with_cpu(models, model, tokens):
    """Quantised weights are multiplied differently by the two back ends: ggml-cpu with the
    activations quantised to 8 bits (Q8_0 / Q8_K blocks), ggml-vulkan's step-sized shaders
    otherwise, so the logits differ by rounding -- measured on lavapipe 1.6-3.5% of the logit
    range on these random models, whose rows are near-uniform. Bounded here, and every row whose
    CPU winner leads by more than twice the difference keeps it. Greedy tokens therefore agree
    until a near-tie; docs/BENCHMARKS.md has the agreement measured on generation."""
    out = []
    for layers in (0, -1):
        with Context(Model(models[model], n_gpu_layers=layers), n_ctx=64, causal=False,
                     type_k="f32", type_v="f32", flash_attn=False) as ctx:
            ctx.decode(tokens)
            out.append(np.array(ctx.logits, dtype=np.float64))
    cpu, gpu = out
    err = np.max(np.abs(gpu - cpu))
    assert err / np.max(np.abs(cpu)) <= 0.06
    top = np.sort(cpu, axis=1)
    clear = top[:, -1] - top[:, -2] > 2 * err
    assert (gpu.argmax(axis=1) == cpu.argmax(axis=1))[clear].all()


def test_cpu_build_without_vulkan_says_so(models, caplog):
    """Asking for GPU layers where no GPU device exists logs it and runs on the CPU."""
    if any(d["kind"] in ("gpu", "igpu") for d in llamadiff.devices()):
        pytest.skip("this machine has a GPU device")
    with caplog.at_level("WARNING", logger="llamadiff.llama"):
        tokens = _generate(models["qwen3"], -1, block_length=4, steps=4)
    assert tokens == _generate(models["qwen3"], 0, block_length=4, steps=4)
    assert any("no usable GPU device" in r.getMessage() for r in caplog.records)

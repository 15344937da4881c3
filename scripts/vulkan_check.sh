#!/usr/bin/env bash
# Build llamadiff with ggml's Vulkan back end and run its Vulkan tests on whatever Vulkan device
# the machine has: Mesa's software driver (lavapipe) where there is no GPU, the vendor's driver
# where there is one (docs/BUILDING.md, "Vulkan").
#
#   scripts/vulkan_check.sh          install the Debian packages it lacks, build into a venv, test
#   scripts/vulkan_check.sh pack     after that: .vk/ = a wheel of that build for the GPU machine's
#                                    Python (3.12 unless LLAMADIFF_PACK_PYTHON names another)
#   scripts/vulkan_check.sh device   on a GPU machine (no network), carrying .vk and .gl (the Vulkan
#                                    loader's Debian packages, /work/.library/device/README.md):
#                                    install the packed wheel, run the Vulkan tests through the
#                                    vendor's driver, time F16 / Q8_0 / Q4_K_M offloaded
#
# Environment: VULKAN_VENV (default build/vulkan-venv), PYTHON (default python3).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

if [ "${1:-}" = "pack" ]; then
    PACK_PY=${LLAMADIFF_PACK_PYTHON:-python3.12}
    [ -d build/llama.cpp-vulkan ] || { echo "no build/llama.cpp-vulkan: run scripts/vulkan_check.sh first"; exit 1; }
    venv=$(mktemp -d)/venv
    "$PACK_PY" -m venv "$venv"
    "$venv/bin/pip" install -q "setuptools>=64" wheel "Cython>=3.0,<4" "cmake>=3.21" ninja "scikit-build-core>=0.9" numpy
    mkdir -p .vk
    grep -qx '/.vk/' "$(git rev-parse --git-path info/exclude)" 2>/dev/null \
        || echo '/.vk/' >> "$(git rev-parse --git-path info/exclude)"
    rm -f .vk/llamadiff-*.whl
    t0=$(date +%s)
    # the Cython extensions compile again for that Python; ggml-vulkan is reused as built
    LLAMADIFF_VULKAN=1 "$venv/bin/pip" wheel -q --no-build-isolation --no-deps . -w .vk
    "$venv/bin/pip" download -q --no-deps "gguf==0.19.0" -d .vk
    echo "wheel built in $(( $(date +%s) - t0 )) s"
    ls -la .vk; du -sh .vk
    exit 0
fi

if [ "${1:-}" = "device" ]; then
    OUT=${OUT:-/tmp/vulkan_check_out}; mkdir -p "$OUT"
    exec > >(tee "$OUT/vulkan_check.log") 2>&1
    PY=${PYTHON:-python3}
    START=$(date +%s)
    # the Vulkan loader (the image has the driver's ICD, not always the loader)
    if ! ldconfig -p | grep -q libvulkan.so.1; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
    fi
    ICD=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    [ -f "$ICD" ] && [ -z "${VK_DRIVER_FILES:-}" ] && ! ls /usr/share/vulkan/icd.d/*.json > /dev/null 2>&1 \
        && export VK_DRIVER_FILES=$ICD
    SITE=/tmp/vulkan-site; rm -rf "$SITE"
    $PY -m pip install -q --no-deps --no-index --no-compile --target "$SITE" .vk/llamadiff-*-cp$($PY -c \
        'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')-*.whl .vk/gguf-*.whl || exit 2
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    (cd /tmp && $PY -c "import llamadiff; print('devices:', llamadiff.devices())")
    echo "== tests ($(( $(date +%s) - START )) s)"
    rc=0; (cd /tmp && timeout 150 $PY -m pytest -q -p no:cacheprovider "$ROOT/tests/test_vulkan.py" --rootdir "$ROOT" \
        > "$OUT/pytest.log" 2>&1) || rc=$?; echo "pytest exit $rc: $(tail -1 "$OUT/pytest.log")"
    grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -10 || true
    echo "== timings ($(( $(date +%s) - START )) s)"
    # VULKAN_SHAPE=small VULKAN_GEN=16 rehearse this on a machine with only lavapipe
    (cd /tmp && timeout ${VULKAN_TIMING_S:-200} $PY "$ROOT/benchmarks/backend_compare.py" \
        --shape ${VULKAN_SHAPE:-sdar} --no-cpu --gen ${VULKAN_GEN:-128} --json "$OUT/backend_compare.json") \
        || echo "== timings stopped (exit $?): VULKAN_TIMING_S=${VULKAN_TIMING_S:-200} s"
    echo "== total $(( $(date +%s) - START )) s"
    exit 0
fi

need=()
command -v glslc > /dev/null || need+=(glslc)
[ -f /usr/include/vulkan/vulkan.h ] || need+=(libvulkan-dev)
ls /usr/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake > /dev/null 2>&1 || need+=(spirv-headers)
ls /usr/share/vulkan/icd.d/*.json > /dev/null 2>&1 || need+=(mesa-vulkan-drivers)
command -v vulkaninfo > /dev/null || need+=(vulkan-tools)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    echo "== installing ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

venv=${VULKAN_VENV:-build/vulkan-venv}
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
venv=$(cd "$venv" && pwd)
"$venv/bin/pip" install -q --upgrade pip
t0=$(date +%s)
LLAMADIFF_VULKAN=1 "$venv/bin/pip" install -q ".[test]"
echo "== build + install: $(( $(date +%s) - t0 )) s"

# ggml-vulkan leaves CPU-type devices (Mesa's lavapipe) out unless GGML_VK_VISIBLE_DEVICES
# names them: with no GPU among the Vulkan devices, take device 0 (the software one)
if ! vulkaninfo --summary 2>/dev/null | grep -qE "PHYSICAL_DEVICE_TYPE_(DISCRETE|INTEGRATED|VIRTUAL)_GPU"; then
    export GGML_VK_VISIBLE_DEVICES=${GGML_VK_VISIBLE_DEVICES:-0}
    echo "== no Vulkan GPU: the software device (GGML_VK_VISIBLE_DEVICES=$GGML_VK_VISIBLE_DEVICES)"
fi
# from outside the source tree, so that the installed package is the one tested
cd /tmp
"$venv/bin/python" -c "import llamadiff; print('devices:', llamadiff.devices())"
LLAMADIFF_STRICT_SKIPS=0 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    "$ROOT/tests/test_vulkan.py" --rootdir "$ROOT" "$@"

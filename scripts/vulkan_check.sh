#!/usr/bin/env bash
# Build llamadiff with ggml's Vulkan back end and run its Vulkan tests on whatever Vulkan device
# the machine has: Mesa's software driver (lavapipe) where there is no GPU, the vendor's driver
# where there is one (docs/BUILDING.md, "Vulkan").
#
#   scripts/vulkan_check.sh     install the Debian packages it lacks, build into a venv, test
#
# Environment: VULKAN_VENV (default build/vulkan-venv), PYTHON (default python3).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

need=()
command -v glslc > /dev/null || need+=(glslc)
[ -f /usr/include/vulkan/vulkan.h ] || need+=(libvulkan-dev)
ls /usr/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake > /dev/null 2>&1 || need+=(spirv-headers)
ls /usr/share/vulkan/icd.d/*.json > /dev/null 2>&1 || need+=(mesa-vulkan-drivers)
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

# from outside the source tree, so that the installed package is the one tested
cd /tmp
"$venv/bin/python" -c "import llamadiff; print('devices:', llamadiff.devices())"
LLAMADIFF_STRICT_SKIPS=0 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    "$ROOT/tests/test_vulkan.py" --rootdir "$ROOT" "$@"

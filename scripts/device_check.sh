#!/usr/bin/env bash
# One call on a fresh GPU machine (no internet): install a CUDA build of llamadiff made
# beforehand (or build one there), run the GPU tests, then the speed matrix of
# benchmarks/gpu_matrix.py: F16 / Q8_0 / Q4_K_M x fused / unfused x sampling where the logits
# are (sampler="device") / on a host copy ("cuda"), the F16 vector-kernel route on and off,
# CUDA graphs on and off, batches of 1-128 with each step split into decode, sampling and host
# time, and the search for the several-sequence graph-replay fault; print the tables.
#
#   here, after a CUDA build (docs/BUILDING.md):   scripts/device_check.sh pack
#       -> .device/: the llamadiff wheel for the GPU machine's Python (3.12 unless
#          LLAMADIFF_PACK_PYTHON names another), the gguf wheel, llama-diffusion-cli built
#          against the same ggml, and the trimmed llama.cpp source (for the fallback build)
#   here, without a GPU, to rehearse every step:    scripts/device_check.sh rehearse
#   on the GPU machine, carrying .device:          scripts/device_check.sh
#   the earlier timings instead (sampler alone, decode per route, blocks 4 / 8 / 16, the
#   no-cache mode, upstream llama-diffusion-cli, batch scaling): scripts/device_check.sh classic
#   where a block step's time goes, instead:       scripts/device_check.sh profile
#   the DiffusionGemma-shaped case, instead:       scripts/device_check.sh canvas
#   (rehearsed with:                               scripts/device_check.sh rehearse [classic|profile])
#
# Budget: one call of under 8 minutes. Installing the packed wheel takes seconds; without it
# the script compiles ggml-cuda there (several minutes on 16 cores for one architecture).
# Each phase checks the clock and is skipped (and said so) when the budget is short.
# Results: $OUT/device_check.json, $OUT/device_check.log, $OUT/pytest.log (when $OUT is set).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "${1:-}" = "bundle" ]; then
    # from the pinned, hash-checked sdist (unpatched: setup.py applies vendor/patches itself)
    sdist=${LLAMADIFF_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llamadiff}/llama_cpp_python-0.3.36.tar.gz
    [ -f "$sdist" ] || { echo "missing $sdist: run a normal build (pip install -e .) first"; exit 1; }
    echo "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e  $sdist" | sha256sum -c - || exit 1
    tmp=$(mktemp -d)
    tar -xzf "$sdist" -C "$tmp" llama_cpp_python-0.3.36/vendor/llama.cpp
    mkdir -p .device
    grep -qx '/.device/' "$(git rev-parse --git-path info/exclude)" 2>/dev/null \
        || echo '/.device/' >> "$(git rev-parse --git-path info/exclude)"
    tar -czf .device/llama.cpp.tar.gz -C "$tmp/llama_cpp_python-0.3.36/vendor" \
        --exclude='llama.cpp/models' --exclude='llama.cpp/docs' --exclude='llama.cpp/tools' \
        --exclude='llama.cpp/examples' --exclude='llama.cpp/tests' --exclude='llama.cpp/benches' \
        --exclude='llama.cpp/media' --exclude='llama.cpp/ggml/src/ggml-vulkan' \
        --exclude='llama.cpp/ggml/src/ggml-sycl' --exclude='llama.cpp/ggml/src/ggml-opencl' \
        --exclude='llama.cpp/ggml/src/ggml-cann' --exclude='llama.cpp/ggml/src/ggml-webgpu' \
        --exclude='llama.cpp/ggml/src/ggml-hexagon' --exclude='llama.cpp/ggml/src/ggml-musa' \
        --exclude='llama.cpp/ggml/src/ggml-zdnn' --exclude='llama.cpp/ggml/src/ggml-metal' \
        --exclude='*.gguf' --exclude='.git' llama.cpp
    rm -rf "$tmp"
    ls -la .device/llama.cpp.tar.gz
    exit 0
fi

if [ "${1:-}" = "pack" ]; then
    # a CUDA build here first (docs/BUILDING.md, "A build box"); the wheel reuses its
    # build/llama.cpp-cuda, so only the Cython extensions compile again for another Python
    set -e
    PACK_PY=${LLAMADIFF_PACK_PYTHON:-python3.12}
    [ -d build/llama.cpp-cuda ] || { echo "no build/llama.cpp-cuda: build with LLAMADIFF_CUDA=1 first"; exit 1; }
    "$0" bundle
    venv=$(mktemp -d)/venv
    "$PACK_PY" -m venv "$venv"
    # the same cuBLAS release as the first build (setup.py records it in build/cuda-cublas/VERSION):
    # same headers and flags, so nothing of ggml-cuda compiles again (the libraries relink)
    cublas="nvidia-cublas==$(cat build/cuda-cublas/VERSION 2>/dev/null || echo '13.0.*')"
    echo "== $cublas"
    "$venv/bin/pip" install -q "setuptools>=64" wheel "Cython>=3.0,<4" "cmake>=3.21" ninja "scikit-build-core>=0.9" \
        numpy "$cublas"
    tag=$("$venv/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    rm -f .device/llamadiff-*-"$tag"-*.whl .device/gguf-*.whl
    t0=$(date +%s)
    LLAMADIFF_CUDA=1 LLAMADIFF_CUDA_ARCHS=${LLAMADIFF_CUDA_ARCHS:-90} LLAMADIFF_RPC=${LLAMADIFF_RPC:-1} \
        CMAKE_ARGS="${CMAKE_ARGS:--DGGML_CUDA_NO_VMM=ON}" \
        "$venv/bin/pip" wheel -q --no-build-isolation --no-deps . -w .device
    echo "wheel built in $(( $(date +%s) - t0 )) s"
    "$venv/bin/pip" download -q --no-deps "gguf==0.19.0" -d .device
    # upstream llama-diffusion-cli against the same shared ggml: only common/ and the tool compile
    cmake -S vendor/llama.cpp -B build/llama.cpp-cuda -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_EXAMPLES=ON > /dev/null
    cmake --build build/llama.cpp-cuda --target llama-diffusion-cli -j "$(nproc)" > /dev/null
    cp build/llama.cpp-cuda/bin/llama-diffusion-cli .device/
    # its libllama-common (shared in this tree) beside it: the RUNPATH has $ORIGIN; libllama and
    # libggml* come from the installed wheel (LD_LIBRARY_PATH below)
    cp -L build/llama.cpp-cuda/bin/libllama-common.so.0 .device/
    strip .device/llama-diffusion-cli .device/libllama-common.so.0
    ls -la .device
    du -sh .device
    exit 0
fi

REHEARSE=0; PROFILE=0; CLASSIC=0
if [ "${1:-}" = "rehearse" ]; then
    # every step on this machine's CPU: the packed wheel (for this Python) installed as on the
    # GPU machine, the tests (the GPU ones skip), timings with --device cpu on a small model
    REHEARSE=1
fi
if [ "${1:-}" = "profile" ] || [ "${2:-}" = "profile" ]; then
    # instead of the tests and timings: where a block step's time goes (benchmarks/gpu_profile.py)
    PROFILE=1
fi
if [ "${1:-}" = "classic" ] || [ "${2:-}" = "classic" ]; then
    CLASSIC=1
fi
CANVAS=0
if [ "${1:-}" = "canvas" ] || [ "${2:-}" = "canvas" ]; then
    # instead of the tests and timings: the DiffusionGemma-shaped case (benchmarks/canvas_device.py:
    # published layer shapes and vocabulary, 6 layers, F16 / Q8_0 / Q4_K_M, prompt 1024, one canvas)
    CANVAS=1
fi

BUDGET=${DEVICE_CHECK_BUDGET_S:-470}
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
OUT=${OUT:-/tmp/device_check_out}
mkdir -p "$OUT"
exec > >(tee "$OUT/device_check.log") 2>&1
PY=${PYTHON:-python3}
echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader 2>&1 | head -1)$([ $REHEARSE = 1 ] && echo ' (rehearsal on the CPU)')"
echo "== $($PY --version) nvcc: $(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null) cores: $(nproc)"
export PATH="$PATH:/usr/local/cuda/bin"

DEVICE=cuda; GEN=256; MODEL=/tmp/sdar-1.7b-shape-f16.gguf; PARALLEL=1,8,16,32,64,128; PROMPTS=128
if [ $REHEARSE = 1 ]; then DEVICE=cpu; GEN=32; MODEL=/tmp/device-check-rehearsal.gguf; PARALLEL=1,4,8; PROMPTS=8; fi
# DEVICE_CHECK_QUICK=1: a second look after a change (about 150 s): no upstream CLI, no
# graphs-off run, fewer batch sizes
QUICK=${DEVICE_CHECK_QUICK:-0}
[ "$QUICK" = 1 ] && [ $REHEARSE = 0 ] && { PARALLEL=1,16,64; PROMPTS=64; }
CLI=""
[ -x .device/llama-diffusion-cli ] && [ $PROFILE = 0 ] && [ "$QUICK" = 0 ] && CLI=$ROOT/.device/llama-diffusion-cli
MODEL_PID=""
write_models() {
    [ $CLASSIC = 1 ] || [ $PROFILE = 1 ] || return 0      # the matrix writes its own (gpu_matrix.py write)
    # the random models (SDAR-1.7B-shaped F16, and a LLaDA of that shape for the upstream
    # CLI), written in the background while the rest installs, builds or tests
    ( cd /tmp && $PY "$ROOT/benchmarks/device_check.py" --device $DEVICE --model "$MODEL" \
        ${CLI:+--upstream-cli "$CLI"} --write-model-only > "$OUT/model.log" 2>&1 ) &
    MODEL_PID=$!
}

SITE=/tmp/device-check-site
rm -rf "$SITE"
WHEEL=$(ls .device/llamadiff-*-cp$($PY -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')-*.whl 2>/dev/null | head -1)
installed=0
if [ -n "$WHEEL" ]; then
    echo "== install $WHEEL ($(left) s left)"
    t0=$(date +%s)
    if $PY -m pip install -q --no-deps --no-index --no-compile --target "$SITE" "$WHEEL" .device/gguf-*.whl \
            > "$OUT/install.log" 2>&1; then
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        # the wheel's libraries find PyPI's cuBLAS / cudart through an rpath relative to
        # site-packages; installed elsewhere (--target), point at this Python's own packages
        NV=$($PY -c "import nvidia, os; print(':'.join(os.path.join(p, d, 'lib') for p in nvidia.__path__ for d in ('cu13', 'cublas', 'cuda_runtime')))" 2>/dev/null)
        export LD_LIBRARY_PATH="${NV:+$NV:}${LD_LIBRARY_PATH:-}"
        # run from outside the repository: its llamadiff/ (no compiled modules) must not shadow the wheel
        if (cd /tmp && $PY -c "import llamadiff, llamadiff.cuda") > "$OUT/import.log" 2>&1; then
            installed=1
            echo "== installed in $(( $(date +%s) - t0 )) s"
            write_models
        else
            echo "== the packed wheel does not import here:"; tail -5 "$OUT/import.log"
        fi
    else
        tail -5 "$OUT/install.log"
    fi
fi

if [ $installed = 0 ]; then
    [ $REHEARSE = 1 ] && { echo "== rehearse needs .device/ from 'scripts/device_check.sh pack' for $($PY --version)"; exit 2; }
    # llama.cpp source: the build's own vendor tree if present, else the carried bundle
    if [ ! -f vendor/llama.cpp/include/llama.h ]; then
        [ -f .device/llama.cpp.tar.gz ] || { echo "no llama.cpp source: run 'scripts/device_check.sh bundle' here and carry .device"; exit 2; }
        mkdir -p /tmp/llamacpp-src && tar -xzf .device/llama.cpp.tar.gz -C /tmp/llamacpp-src
        export LLAMADIFF_LLAMA_CPP_DIR=/tmp/llamacpp-src/llama.cpp
    fi
    # gguf (a dependency) may be missing from the image: llama.cpp's own gguf-py is the same release
    if ! $PY -c "import gguf" 2>/dev/null; then
        export PYTHONPATH="${LLAMADIFF_LLAMA_CPP_DIR:-$ROOT/vendor/llama.cpp}/gguf-py${PYTHONPATH:+:$PYTHONPATH}"
    fi
    write_models
    ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
    export LLAMADIFF_CUDA=1 LLAMADIFF_CUDA_ARCHS=${LLAMADIFF_CUDA_ARCHS:-${ARCH:-90}}
    export LLAMADIFF_RPC=0      # not measured here; the bundle leaves out llama.cpp's tools/
    export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
    echo "== no packed wheel: build LLAMADIFF_CUDA=1 LLAMADIFF_CUDA_ARCHS=$LLAMADIFF_CUDA_ARCHS ($(left) s left)"
    t0=$(date +%s)
    if ! timeout $(( $(left) - 150 )) $PY -m pip install --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1; then
        tail -40 "$OUT/build.log"
        echo "== BUILD FAILED or ran out of time after $(( $(date +%s) - t0 )) s; see build.log"
        exit 3
    fi
    echo "== build took $(( $(date +%s) - t0 )) s"
fi
(cd /tmp && $PY -c "import llamadiff, llamadiff.cuda as c; print('llamadiff', llamadiff.__file__); print('cuda built:', c.is_built(), 'ggml-cuda:', c.ggml_cuda_built(), 'devices:', c.device_count(), c.device_name(0) if c.device_count() else '')")

if [ $PROFILE = 1 ]; then
    wait $MODEL_PID; cat "$OUT/model.log"
    P="$ROOT/benchmarks/gpu_profile.py --device $DEVICE --model $MODEL --json $OUT/gpu_profile.json"
    (cd /tmp && timeout 90 $PY $P decode)
    (cd /tmp && GGML_CUDA_DISABLE_GRAPHS=1 timeout 90 $PY $P decode)
    if [ $REHEARSE = 0 ]; then
        (cd /tmp && timeout 90 $PY $P torch)
        NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
        for rows in 4 1; do
            [ "$(left)" -gt 100 ] || { echo "== ncu $rows skipped: $(left) s left"; continue; }
            echo "== ncu, one $rows-token decode ($(left) s left)"
            (cd /tmp && GGML_CUDA_DISABLE_GRAPHS=1 timeout 120 "$NCU" --clock-control none --profile-from-start off \
                --metrics gpu__time_duration.sum --print-units base --csv $PY $P ncu $rows > "$OUT/ncu$rows.csv" 2> "$OUT/ncu$rows.err")
            echo "ncu exit $?"; tail -3 "$OUT/ncu$rows.err"
            (cd /tmp && $PY $P ncu-report "$OUT/ncu$rows.csv")
        done
    fi
    echo "== total $(( $(date +%s) - START )) s"
    exit 0
fi

if [ $CANVAS = 1 ]; then
    CD="$ROOT/benchmarks/canvas_device.py"; J="$OUT/canvas.jsonl"
    echo "== DiffusionGemma-shaped model ($(left) s left)"
    (cd /tmp && timeout $(( $(left) - 120 )) $PY "$CD" write --dir /tmp/dg --device $DEVICE --json "$J")
    echo "== DiffusionGemma-shaped timings ($(left) s left)"
    (cd /tmp && timeout $(( $(left) - 10 )) $PY "$CD" run --dir /tmp/dg --device $DEVICE --json "$J")
    echo "== total $(( $(date +%s) - START )) s"
    exit 0
fi

if [ $CLASSIC = 0 ]; then
    # the speed matrix (benchmarks/gpu_matrix.py); its models are written while the tests run
    GM="$ROOT/benchmarks/gpu_matrix.py"; GMD=/tmp/gpu-matrix; J="$OUT/gpu_matrix.jsonl"
    SAMPLERS=device,cuda; PAR=1,8,16,32,64,128; MGEN=256; SEQS=2,3,16
    [ $REHEARSE = 1 ] && { SAMPLERS=device,cpu; PAR=1,4,8; MGEN=32; SEQS=2,3; }
    ( cd /tmp && $PY "$GM" write --dir $GMD --device $DEVICE --json "$J" > "$OUT/matrix-write.log" 2>&1 ) &
    WRITE_PID=$!
    echo "== tests ($(left) s left)"
    TL=$(( $(left) - 300 )); [ $TL -lt 60 ] && TL=60     # leave the matrix its 300 s; never 0 (= no limit)
    (cd /tmp && timeout $TL $PY -m pytest -q "$ROOT/tests/test_cuda.py" -p no:cacheprovider \
        --rootdir "$ROOT" > "$OUT/pytest.log" 2>&1)
    echo "pytest exit $?: $(tail -1 "$OUT/pytest.log")"
    grep -E "^(FAILED|ERROR|XFAIL)" "$OUT/pytest.log" | head -12
    wait $WRITE_PID; tail -2 "$OUT/matrix-write.log"
    run() {     # run NAME SECONDS ENV... -- ARGS: one phase of the matrix, skipped when time is short
        local name=$1 need=$2; shift 2
        local vars=(); while [ "$1" != "--" ]; do vars+=("$1"); shift; done; shift
        if [ "$(left)" -gt "$need" ]; then
            echo "== $name ($(left) s left)"
            (cd /tmp && env "${vars[@]}" timeout $(( $(left) - 10 )) $PY "$GM" "$@" --dir $GMD --device $DEVICE \
                --json "$J" | grep -v '^{' | tee -a "$OUT/matrix.md")
        else
            echo "== $name skipped: $(left) s left" | tee -a "$OUT/matrix.md"
        fi
    }
    run "one sequence, stock kernels" 60 -- single --samplers $SAMPLERS --gen $MGEN
    run "one sequence, F16 products of 2-8 columns on the vector kernel" 45 LLAMADIFF_CUDA_MMVF_COLS=8 -- \
        single --types f16 --samplers device --gen $MGEN
    run "one sequence, CUDA graphs off" 40 GGML_CUDA_DISABLE_GRAPHS=1 -- single --types f16 --samplers device --gen $MGEN
    run "batches, F16 fused" 60 -- batch --samplers $SAMPLERS --parallel $PAR
    run "batches, F16 unfused" 45 -- batch --samplers device --parallel $PAR --model sdar-1.7b-f16.gguf
    run "several-sequence graph replay" 30 -- replay --sequences $SEQS
    echo "== total $(( $(date +%s) - START )) s"
    exit 0
fi

echo "== tests ($(left) s left)"
(cd /tmp && timeout $(( $(left) - 100 )) $PY -m pytest -q -x "$ROOT/tests/test_cuda.py" -p no:cacheprovider \
    --rootdir "$ROOT" > "$OUT/pytest.log" 2>&1)
echo "pytest exit $?: $(tail -1 "$OUT/pytest.log")"
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -10

wait $MODEL_PID; cat "$OUT/model.log"
if [ -n "$CLI" ]; then
    # the CLI links the wheel's libllama / libggml*: found next to the installed package
    export LD_LIBRARY_PATH="$(cd /tmp && $PY -c 'import llamadiff, os; print(os.path.dirname(llamadiff.__file__))' 2>/dev/null):${LD_LIBRARY_PATH:-}"
fi
echo "== timings ($(left) s left)"
(cd /tmp && timeout $(( $(left) - 10 )) $PY "$ROOT/benchmarks/device_check.py" --device $DEVICE --model "$MODEL" \
    --gen $GEN ${CLI:+--upstream-cli "$CLI"} --json "$OUT/device_check.json" --budget-s $(( $(left) - 75 )))
# ggml-cuda replays a CUDA graph only while the graph stays the same (DESIGN §5): the loop
# keeps one step shape for that (fixed_step_shape, on by default with offloaded layers); the
# same runs with the minimal steps, and with graphs off, show what each is worth
VARIANTS=("fixed-off||--fixed-step-shape off" "graphs-off|GGML_CUDA_DISABLE_GRAPHS=1|")
[ "$QUICK" = 1 ] && VARIANTS=("fixed-off||--fixed-step-shape off")
for variant in "${VARIANTS[@]}"; do
    IFS='|' read -r name vars args <<< "$variant"
    if [ "$(left)" -gt 150 ]; then
        echo "== block 4 and 16, $name ($(left) s left)"
        (cd /tmp && env $vars timeout 60 $PY "$ROOT/benchmarks/device_check.py" --device $DEVICE \
            --model "$MODEL" --gen $GEN --e2e-only 4,16 $args --json "$OUT/$name.json")
    else
        echo "== $name run skipped: $(left) s left"
    fi
done
# batched generation on the GPU: committed tok/s against parallel sequences (issue targets:
# >= 6,000 tok/s at 64 sequences, >= 10,000 at the best batch size, SDAR-1.7B shape, block 4)
if [ "$(left)" -gt 90 ]; then
    echo "== batch scaling ($(left) s left)"
    (cd /tmp && timeout $(( $(left) - 15 )) $PY "$ROOT/benchmarks/batch_scaling.py" --model "$MODEL" \
        --device $DEVICE --parallel $PARALLEL --prompts $PROMPTS --gen 32 --runs 1 | tee "$OUT/batch_scaling.md")
else
    echo "== batch scaling skipped: $(left) s left"
fi
echo "== total $(( $(date +%s) - START )) s"

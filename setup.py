"""Build llamadiff: fetch the pinned llama.cpp, patch it, build it with CMake, then the Cython core.

Steps (each skipped when its output is already up to date, so an edit of a .pyx
rebuilds only the extension):

1. ``vendor/llama.cpp`` is filled from the PyPI sdist ``llama-cpp-python==0.3.36``
   (downloaded with ``python -m pip download``, so the user's index, proxy and certificate
   settings apply; sha256-checked; only its ``vendor/llama.cpp/`` extracted), or
   copied from ``$LLAMADIFF_LLAMA_CPP_DIR``. A stamp file records the source and the
   patch set, so the tree is re-made only when either changes.
2. ``vendor/patches/*.patch`` are applied in name order.
3. ``llama`` + ``ggml`` are built as shared libraries in ``build/llama.cpp-<variant>``
   (reused between builds; ccache is used when installed).
4. The Cython extensions are built against them with an ``$ORIGIN`` rpath, and the
   libraries are copied next to them inside the package.

Environment knobs (documented in README.md):
  LLAMADIFF_LLAMA_CPP_DIR   build from this llama.cpp tree instead of downloading
  LLAMADIFF_NATIVE          1/0: CPU-specific flags (GGML_NATIVE); default 1
  LLAMADIFF_CUDA            1/0: build ggml with CUDA (GGML_CUDA) and the GPU sampler; default 0
  LLAMADIFF_VULKAN          1/0: build ggml's Vulkan back end (GGML_VULKAN: AMD, Intel, mobile and
                            NVIDIA GPUs; needs the Vulkan headers, loader and glslc); default 0
  LLAMADIFF_RPC             1/0: the ggml RPC backend and rpc-server (GGML_RPC); default 1
  LLAMADIFF_CUDA_ARCHS      CUDA architectures, e.g. "90" or "80;86;89;90"; default: the local
                            GPU's, else DEFAULT_CUDA_ARCHS
  LLAMADIFF_CUDA_SAMPLER    1/0: build the GPU sampler (llamadiff.cuda._sampler) even without a
                            CUDA ggml (CI: checks that it compiles, links and fails cleanly
                            without a driver); default: LLAMADIFF_CUDA
  LLAMADIFF_BUILD_TYPE      CMake build type; default Release
  LLAMADIFF_CACHE_DIR       where the downloaded sdist is kept; default ~/.cache/llamadiff
  CMAKE_ARGS                extra arguments passed to CMake's configure step
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
VENDOR = ROOT / "vendor"
LLAMA_DIR = VENDOR / "llama.cpp"
PATCH_DIR = VENDOR / "patches"
STAMP = LLAMA_DIR / ".llamadiff-source"

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_FILE = "llama_cpp_python-0.3.36.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_PREFIX = "llama_cpp_python-0.3.36/vendor/llama.cpp/"

# The shared libraries the extension needs at run time, by SONAME.
LIB_GLOBS = ["libllama.so*", "libggml*.so*"]

# CUDA architectures when LLAMADIFF_CUDA_ARCHS is unset and no GPU is visible: Ampere
# (A100 80, RTX 30xx 86), Ada (L4/L40/RTX 40xx 89), Hopper (H100/H200 90). Each one adds
# roughly a full ggml-cuda compile to the build time (one took 28 minutes on 2 cores).
DEFAULT_CUDA_ARCHS = "80;86;89;90"
SAMPLER_CU = ROOT / "llamadiff" / "cuda" / "sampler.cu"


def log(msg: str) -> None:
    print(f"[llamadiff-build] {msg}", flush=True)


def env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "off", "no")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def patch_files() -> list[Path]:
    return sorted(PATCH_DIR.glob("*.patch"))


def patch_set_digest() -> str:
    digest = hashlib.sha256()
    for patch in patch_files():
        digest.update(patch.name.encode())
        digest.update(patch.read_bytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- source


def cache_dir() -> Path:
    explicit = os.environ.get("LLAMADIFF_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llamadiff"


def pip_download_command(dest: str) -> list[str]:
    """`python -m pip download` of the pinned sdist into `dest`.

    pip is the route because it is the one a user has already configured: its index
    (PIP_INDEX_URL, pip.conf), proxies and certificates apply here exactly as they do to
    ``pip install``. pyproject.toml lists pip as a build requirement, so it is importable
    inside pip's isolated build environment too.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", SDIST_NAME,
           "--disable-pip-version-check", "-d", dest]
    # pip reads the sdist's metadata, which needs its build backend (scikit-build-core).
    # It is one of our own build requirements, so normally already importable: then skip
    # the second isolated environment pip would otherwise make for it.
    if importlib.util.find_spec("scikit_build_core") is not None:
        cmd.append("--no-build-isolation")
    return cmd + [f"{SDIST_NAME}=={SDIST_VERSION}"]


def pip_error_lines(output: str, limit: int = 15) -> str:
    """pip's own explanation: its ERROR/WARNING lines, else the tail of its output."""
    lines = [line for line in output.splitlines() if line.strip()]
    picked = [line for line in lines if line.lstrip().startswith(("ERROR", "WARNING", "No module"))]
    return "\n".join((picked or lines)[-limit:])


def fetch_sdist() -> Path:
    """Return a hash-checked copy of the pinned sdist, downloading it with pip if needed."""
    cached = cache_dir() / SDIST_FILE
    if cached.is_file() and sha256_of(cached) == SDIST_SHA256:
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = pip_download_command(tmp)
        log(f"downloading the llama.cpp source ({SDIST_FILE}, 77 MB): " + " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / SDIST_FILE
        if proc.returncode != 0 or not got.is_file():
            why = pip_error_lines(proc.stdout + "\n" + proc.stderr) or f"pip exited with {proc.returncode}"
            raise SystemExit(
                f"llamadiff: could not download the llama.cpp source {SDIST_NAME}=={SDIST_VERSION} "
                f"with pip (exit {proc.returncode}). pip said:\n{why}\n\n"
                "What to try:\n"
                "- The download runs with your pip configuration: environment variables (PIP_INDEX_URL, "
                "PIP_EXTRA_INDEX_URL, PIP_CERT, HTTPS_PROXY) and pip.conf apply; options given on the "
                "`pip install` command line (-i, --proxy, --cert) do not reach this step, so set them "
                "as those variables or in pip.conf.\n"
                "- Or fetch the file yourself and put it where the build looks first:\n"
                f"    pip download --no-deps --no-binary {SDIST_NAME} {SDIST_NAME}=={SDIST_VERSION} "
                f"-d {cached.parent}\n"
                f"  ($LLAMADIFF_CACHE_DIR, default ~/.cache/llamadiff; the file must have sha256 "
                f"{SDIST_SHA256}).\n"
                "- Or point LLAMADIFF_LLAMA_CPP_DIR at a llama.cpp source tree of the same upstream "
                "commit (0c1e570) to build without downloading.")
        actual = sha256_of(got)
        if actual != SDIST_SHA256:
            raise SystemExit(
                f"llamadiff: sha256 mismatch for {SDIST_FILE} as served by your package index: "
                f"expected {SDIST_SHA256}, got {actual}. Refusing to build from an unverified source.")
        shutil.copyfile(got, cached)
    return cached


def extract_llama_cpp(sdist: Path, dest: Path) -> None:
    """Extract only ``vendor/llama.cpp/`` of the sdist into ``dest``."""
    with tarfile.open(sdist, "r:gz") as tar:
        members = []
        for member in tar.getmembers():
            if not member.name.startswith(SDIST_PREFIX):
                continue
            member.name = member.name[len(SDIST_PREFIX):]
            if member.name:
                members.append(member)
        kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **kwargs)


def copy_llama_cpp(src: Path, dest: Path) -> None:
    if not (src / "include" / "llama.h").is_file():
        raise SystemExit(f"llamadiff: LLAMADIFF_LLAMA_CPP_DIR={src} is not a llama.cpp tree "
                         "(include/llama.h is missing)")
    def ignore(directory, names):
        # version control anywhere; build trees and the vocab/test models at the top only
        skip = {n for n in names if n == ".git"}
        if Path(directory) == src:
            skip |= {n for n in names if n.startswith("build") or n == "models"}
        return skip

    shutil.copytree(src, dest, symlinks=True, ignore=ignore)


def apply_patches(tree: Path) -> None:
    if patch_files() and shutil.which("patch") is None:
        raise SystemExit("llamadiff: the build applies vendor/patches/*.patch with the `patch` program, "
                         "which this machine lacks; install it (Debian/Ubuntu: apt-get install patch; "
                         "Fedora: dnf install patch; Alpine: apk add patch)")
    for patch in patch_files():
        log(f"applying {patch.relative_to(ROOT)}")
        proc = subprocess.run(["patch", "-p1", "--forward", "--batch", "-i", str(patch)],
                              cwd=tree, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"llamadiff: patch {patch.name} does not apply to {tree}:\n"
                             f"{proc.stdout}{proc.stderr}")


def prepare_source() -> Path:
    """Make vendor/llama.cpp = pinned upstream source + our patches; return its path."""
    local = os.environ.get("LLAMADIFF_LLAMA_CPP_DIR")
    origin = f"dir:{Path(local).resolve()}" if local else f"sdist:{SDIST_SHA256}"
    wanted = f"{origin}\npatches:{patch_set_digest()}\n"
    if STAMP.is_file() and STAMP.read_text() == wanted:
        return LLAMA_DIR

    tmp = VENDOR / "llama.cpp.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    if local:
        log(f"copying llama.cpp from {local}")
        copy_llama_cpp(Path(local).resolve(), tmp)
    else:
        sdist = fetch_sdist()
        log(f"extracting llama.cpp from {sdist}")
        tmp.mkdir(parents=True)
        extract_llama_cpp(sdist, tmp)
    apply_patches(tmp)
    (tmp / STAMP.name).write_text(wanted)
    if LLAMA_DIR.is_dir() and STAMP.is_file():
        sync_tree(tmp, LLAMA_DIR)
        shutil.rmtree(tmp)
    else:
        shutil.rmtree(LLAMA_DIR, ignore_errors=True)
        tmp.rename(LLAMA_DIR)
    return LLAMA_DIR


def sync_tree(src: Path, dest: Path) -> None:
    """Make `dest` equal to `src`, writing only the files whose content differs (they get a new
    mtime; the others keep theirs), so that a new patch recompiles what it touches instead of
    every object of every build directory (a CUDA build is most of an hour on 2 cores)."""
    seen = set()
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        seen.add(rel)
        target = dest / rel
        if path.is_dir() and not path.is_symlink():
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                target.unlink()
            target.mkdir(exist_ok=True)
        elif path.is_symlink():
            if not (target.is_symlink() and os.readlink(target) == os.readlink(path)):
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
                os.symlink(os.readlink(path), target)
        else:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            if target.is_symlink() or not target.is_file() or target.read_bytes() != path.read_bytes():
                if target.is_symlink():
                    target.unlink()
                shutil.copyfile(path, target)
                shutil.copymode(path, target)
    for path in sorted(dest.rglob("*"), reverse=True):       # children before their folders
        if path.relative_to(dest) not in seen:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists() or path.is_symlink():
                path.unlink()


# --------------------------------------------------------------------------- CMake


def build_variant() -> str:
    """The build directory's name: one per set of GPU back ends, so switching reuses each."""
    gpus = [name for name, on in (("cuda", cuda_enabled()), ("vulkan", vulkan_enabled())) if on]
    return "-".join(gpus) or "cpu"


# --------------------------------------------------------------------------- Vulkan


def vulkan_enabled() -> bool:
    return env_flag("LLAMADIFF_VULKAN", False)


VULKAN_PACKAGES = ("Debian/Ubuntu: apt-get install libvulkan-dev glslc spirv-headers "
                   "(and mesa-vulkan-drivers for a software device); or the LunarG Vulkan SDK "
                   "with VULKAN_SDK set")


def check_vulkan_toolchain() -> None:
    """ggml-vulkan compiles its shaders with glslc: say so before CMake fails deep in the
    configure step (the headers, the loader and the SPIR-V headers are CMake's to find: when it
    cannot, cmake_build names the packages)."""
    if not shutil.which("glslc") and not os.environ.get("VULKAN_SDK"):
        raise SystemExit(f"llamadiff: LLAMADIFF_VULKAN=1 needs glslc and the Vulkan development files "
                         f"({VULKAN_PACKAGES}); see docs/BUILDING.md, 'Vulkan'")


def cuda_enabled() -> bool:
    return env_flag("LLAMADIFF_CUDA", False)


def cuda_sampler_enabled() -> bool:
    return env_flag("LLAMADIFF_CUDA_SAMPLER", cuda_enabled())


def find_nvcc() -> str:
    for candidate in (os.environ.get("CUDACXX"), shutil.which("nvcc"),
                      os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("llamadiff: LLAMADIFF_CUDA=1 needs nvcc (CUDA toolkit) on PATH, in $CUDACXX "
                     "or under $CUDA_HOME")


def cuda_home(nvcc: str) -> Path:
    """The toolkit directory of nvcc (follows wrapper scripts such as /usr/local/bin/nvcc)."""
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"llamadiff: {nvcc} --version failed:\n{out.stdout}{out.stderr}")
    env_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env_home and (Path(env_home) / "include" / "cuda_runtime.h").is_file():
        return Path(env_home)
    real = Path(nvcc).resolve()
    if real.parent.name == "bin" and (real.parent.parent / "include" / "cuda_runtime.h").is_file():
        return real.parent.parent
    # a wrapper script: look for the exec line
    try:
        text = Path(nvcc).read_text(errors="ignore")
        for token in shlex.split(text.replace("\n", " ")):
            if token.endswith("/bin/nvcc") and Path(token).is_file():
                return Path(token).resolve().parent.parent
    except (OSError, ValueError):
        pass
    return Path("/usr/local/cuda")


def local_cuda_archs() -> str | None:
    """Compute capabilities of the visible GPUs (nvidia-smi), e.g. "90"; None without a GPU."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    caps = sorted({line.strip().replace(".", "") for line in out.stdout.splitlines()
                   if line.strip() and line.strip().replace(".", "").isdigit()})
    return ";".join(caps) if out.returncode == 0 and caps else None


def cuda_archs() -> str:
    explicit = os.environ.get("LLAMADIFF_CUDA_ARCHS", "").strip()
    if explicit:
        return explicit.replace(",", ";")
    for arg in shlex.split(os.environ.get("CMAKE_ARGS", "")):
        if arg.startswith("-DCMAKE_CUDA_ARCHITECTURES="):
            return arg.split("=", 1)[1]
    return local_cuda_archs() or DEFAULT_CUDA_ARCHS


def pip_cublas() -> dict[str, Path] | None:
    """cuBLAS from the PyPI package nvidia-cublas (a build box with nvcc but no cuBLAS)."""
    for base in map(Path, sys.path):
        for sub in ("nvidia/cu13", "nvidia/cublas", "nvidia/cu12"):
            lib = base / sub / "lib"
            inc = base / sub / "include"
            cublas = sorted(lib.glob("libcublas.so*")) if lib.is_dir() else []
            cublaslt = sorted(lib.glob("libcublasLt.so*")) if lib.is_dir() else []
            if cublas and cublaslt and (inc / "cublas_v2.h").is_file():
                return {"lib": lib, "include": inc, "cublas": cublas[-1], "cublasLt": cublaslt[-1]}
    return None


def pip_cublas_version(found: dict) -> str | None:
    """The version of the nvidia-cublas distribution that ``found`` belongs to."""
    site = Path(found["lib"]).parents[2]       # <site>/nvidia/<sub>/lib
    for info in sorted(site.glob("nvidia_cublas-*.dist-info")):
        return info.name[len("nvidia_cublas-"):-len(".dist-info")]
    return None


def cuda_cmake_args() -> list[str]:
    """Arguments for a CUDA ggml: architectures, and cuBLAS from PyPI when the toolkit lacks it."""
    nvcc = find_nvcc()
    home = cuda_home(nvcc)
    real_nvcc = home / "bin" / "nvcc"
    args = [f"-DCMAKE_CUDA_COMPILER={real_nvcc if real_nvcc.is_file() else nvcc}"]
    if not any(a.startswith("-DCMAKE_CUDA_ARCHITECTURES=") for a in shlex.split(os.environ.get("CMAKE_ARGS", ""))):
        args.append(f"-DCMAKE_CUDA_ARCHITECTURES={cuda_archs()}")
    user = os.environ.get("CMAKE_ARGS", "")
    if not toolkit_has_cublas(home) and "CUDA_cublas_LIBRARY" not in user:
        found = pip_cublas()
        if found is None:
            raise SystemExit(
                f"llamadiff: the CUDA toolkit at {home} has no cuBLAS and the PyPI package "
                "nvidia-cublas is not installed; `pip install nvidia-cublas` (13.x for CUDA 13) or "
                "pass -DCUDA_cublas_LIBRARY=... -DCUDA_cublasLt_LIBRARY=... in CMAKE_ARGS")
        log(f"cuBLAS from the PyPI package nvidia-cublas: {found['lib']}")
        stable = stable_cublas(found)
        args += [f"-DCUDA_cublas_LIBRARY={stable['cublas']}", f"-DCUDA_cublasLt_LIBRARY={stable['cublasLt']}",
                 f"-DCMAKE_CUDA_FLAGS=-I{stable['include']}", f"-DCMAKE_CXX_FLAGS=-I{stable['include']}"]
    return args


def stable_cublas(found: dict) -> dict:
    """The PyPI cuBLAS in use, at one fixed place under build/: headers copied (a file is
    replaced only when its content changed), libraries linked. pip's isolated build environment
    is a new temporary directory each time, with freshly written files: flags or header
    dependencies naming it would make CMake and Ninja recompile all of ggml-cuda on every
    build; these paths and files stay the same, so a rebuild only relinks."""
    import filecmp
    base = ROOT / "build" / "cuda-cublas"
    include = base / "include"
    if include.is_symlink():
        include.unlink()
    for src in Path(found["include"]).rglob("*"):
        dst = include / src.relative_to(found["include"])
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        elif not dst.is_file() or not filecmp.cmp(src, dst, shallow=False):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    (base / "lib").mkdir(parents=True, exist_ok=True)
    # which release the headers are: a later build against another one recompiles ggml-cuda,
    # so scripts/device_check.sh pack installs this one
    version = pip_cublas_version(found)
    if version:
        (base / "VERSION").write_text(version + "\n")
    out = {"include": include}
    for key in ("cublas", "cublasLt"):
        link = base / "lib" / found[key].name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(found[key])
        out[key] = link
    return out


def toolkit_has_cublas(home: Path) -> bool:
    return any(home.glob("lib64/libcublas.so*")) or any(home.glob("targets/*/lib/libcublas.so*"))


def cuda_build_requires() -> list[str]:
    """Extra build requirements of a CUDA build: cuBLAS from PyPI when the toolkit has none
    (setuptools hands ``setup_requires`` to pip's isolated build environment)."""
    if not cuda_enabled() or "CUDA_cublas_LIBRARY" in os.environ.get("CMAKE_ARGS", ""):
        return []
    try:
        home = cuda_home(find_nvcc())
    except SystemExit:
        return []                       # build_ext reports the missing toolkit itself
    if toolkit_has_cublas(home) or pip_cublas() is not None:
        return []
    version = subprocess.run([str(home / "bin" / "nvcc"), "--version"], capture_output=True, text=True).stdout
    # the toolkit's own minor release: newer cuBLAS headers would need a newer runtime than the
    # toolkit's (and than what docs/BUILDING.md installs next to the wheel)
    release = re.search(r"release (\d+)\.(\d+)", version)
    if release and release.group(1) == "13":
        return [f"nvidia-cublas=={release.group(1)}.{release.group(2)}.*"]
    return ["nvidia-cublas-cu12"]


# where the PyPI CUDA packages (nvidia-cublas, nvidia-cuda-runtime) put their libraries,
# relative to an installed llamadiff/ -- found at run time wherever site-packages is
PIP_CUDA_RPATHS = ["$ORIGIN/../nvidia/cu13/lib", "$ORIGIN/../nvidia/cublas/lib", "$ORIGIN/../nvidia/cuda_runtime/lib"]


def cuda_rpath_link() -> list[str]:
    """Linker flags for programs linked against a CUDA ggml: where the linker finds
    libggml-cuda's own dependencies (cuBLAS from PyPI is on no run-time path at build time)."""
    if not cuda_enabled():
        return []
    dirs = [ROOT / "build" / "cuda-cublas" / "lib"]
    home = cuda_home(find_nvcc())
    dirs += [home / "lib64", home / "targets" / "x86_64-linux" / "lib"]
    return [f"-Wl,-rpath-link,{d}" for d in dirs if d.is_dir()]


def cuda_runtime_dirs() -> list[str]:
    """Directories added to the rpath of a CUDA build, so libggml-cuda finds cudart / cuBLAS:
    the toolkit's, the PyPI packages' next to the installed package, and the PyPI packages'
    of this build's environment."""
    home = cuda_home(find_nvcc())
    dirs = [str(d) for d in (home / "lib64", home / "targets" / "x86_64-linux" / "lib") if d.is_dir()]
    dirs += PIP_CUDA_RPATHS
    found = pip_cublas()
    if found is not None and "pip-build-env" not in str(found["lib"]):
        dirs.append(str(found["lib"]))      # a lasting environment's (pip's isolated one is deleted)
    dirs += [d for d in os.environ.get("LLAMADIFF_CUDA_RPATH", "").split(":") if d]
    return list(dict.fromkeys(dirs))


def compile_sampler(nvcc: str, archs: str) -> Path:
    """nvcc -c llamadiff/cuda/sampler.cu for `archs` (machine code for each, PTX for the
    newest, so later GPUs can JIT it); reused while the sources and flags are unchanged."""
    arch_list = [a.strip() for a in archs.split(";") if a.strip()]
    flags = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-lineinfo"]
    for arch in arch_list:
        real = arch.split("-")[0]          # "90-real" / "90-virtual" spellings of CMake
        if not arch.endswith("-virtual"):
            flags += ["-gencode", f"arch=compute_{real},code=sm_{real}"]
    newest = max((a.split("-")[0] for a in arch_list), key=lambda a: int("".join(c for c in a if c.isdigit()) or 0))
    flags += ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]
    sources = [SAMPLER_CU, SAMPLER_CU.with_suffix(".h"), ROOT / "llamadiff" / "_kernels.h"]
    digest = hashlib.sha256(" ".join([nvcc] + flags).encode())
    for src in sources:
        digest.update(src.read_bytes())
    out_dir = ROOT / "build" / "cuda-sampler"
    out_dir.mkdir(parents=True, exist_ok=True)
    obj = out_dir / f"sampler-{digest.hexdigest()[:12]}.o"
    if not obj.is_file():
        cmd = [nvcc, "-c", str(SAMPLER_CU), "-o", str(obj)] + flags
        log(" ".join(shlex.quote(c) for c in cmd))
        subprocess.run(cmd, check=True)
    return obj


def cmake_configure_args(build_dir: Path) -> list[str]:
    args = [
        f"-DCMAKE_BUILD_TYPE={os.environ.get('LLAMADIFF_BUILD_TYPE', 'Release')}",
        "-DBUILD_SHARED_LIBS=ON",
        # libraries find each other next to the extension, wherever it is installed
        "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
        "-DCMAKE_INSTALL_RPATH=$ORIGIN",
        "-DLLAMA_BUILD_COMMON=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_TOOLS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_CURL=OFF",
        f"-DGGML_NATIVE={'ON' if env_flag('LLAMADIFF_NATIVE', True) else 'OFF'}",
        f"-DGGML_CUDA={'ON' if cuda_enabled() else 'OFF'}",
        f"-DGGML_VULKAN={'ON' if vulkan_enabled() else 'OFF'}",
        f"-DGGML_RPC={'ON' if rpc_enabled() else 'OFF'}",
    ]
    if cuda_enabled():
        args += cuda_cmake_args()
        rpath = ";".join(["$ORIGIN"] + cuda_runtime_dirs())
        args = [a if not a.startswith("-DCMAKE_INSTALL_RPATH=") else f"-DCMAKE_INSTALL_RPATH={rpath}"
                for a in args]
    ninja = shutil.which("ninja")
    if ninja:
        # Pin the generator program on every configure: a build environment made by pip
        # may be gone by the next build, and CMake would keep pointing at its ninja.
        args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    args += shlex.split(os.environ.get("CMAKE_ARGS", ""))
    return args


def rpc_enabled() -> bool:
    """The ggml RPC backend (models split across machines) and its rpc-server; default on."""
    return env_flag("LLAMADIFF_RPC", True)


def build_rpc_server(source: Path, lib_dir: Path) -> Path | None:
    """Compile llama.cpp's tools/rpc/rpc-server.cpp against the shared ggml libraries (one
    file: cheaper than configuring llama.cpp's tools tree); rebuilt only when stale."""
    src = source / "tools" / "rpc" / "rpc-server.cpp"
    exe = lib_dir / "llamadiff-rpc-server"
    if not src.is_file():
        log(f"{src} is missing (a trimmed llama.cpp tree): no rpc-server")
        return None
    libs = sorted(lib_dir.glob("libggml*.so*"))
    if exe.exists() and all(exe.stat().st_mtime >= f.stat().st_mtime for f in [src, *libs]):
        return exe
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        log("no C++ compiler for rpc-server; skipped")
        return None
    cmd = [cxx, "-O2", "-std=c++17", str(src), "-I", str(source / "ggml" / "include"),
           "-L", str(lib_dir), "-lggml", "-lggml-base", "-lggml-rpc", "-Wl,-rpath,$ORIGIN", "-pthread",
           *cuda_rpath_link(), "-o", str(exe)]
    log(" ".join(shlex.quote(a) for a in cmd))
    subprocess.run(cmd, check=True)
    return exe


def drop_stale_sub_builds(build_dir: Path) -> None:
    """CMake projects built inside the build (ggml-vulkan's shader generator, an
    ExternalProject) keep the make program and cmake of their first configure in their own
    cache; pip builds each time in a new isolated environment, so the next build found them
    gone ("ninja --version ... no such file or directory"). The make program is pointed at this
    build's ninja (cmake updates its own entry when it runs): the generator is not rebuilt, so
    the shaders it wrote are not generated again (13 minutes on 2 cores). A cache naming a
    program that cannot be replaced is removed, and the sub-project configures from scratch."""
    ninja = shutil.which("ninja")
    for cache in build_dir.glob("*/**/CMakeCache.txt"):
        text = cache.read_text(errors="ignore")
        m = re.search(r"^CMAKE_MAKE_PROGRAM:[A-Z]+=(.+)$", text, re.M)
        if not (m and m.group(1).startswith("/") and not Path(m.group(1).strip()).exists()):
            continue
        where = cache.parent.relative_to(build_dir)
        if ninja and "Ninja" in text:
            log(f"{where}: its ninja ({m.group(1).strip()}) is gone; using {ninja}")
            cache.write_text(text[:m.start(1)] + ninja + text[m.end(1):])
        else:
            log(f"{where}: its make program ({m.group(1).strip()}) is gone; configuring it again")
            cache.unlink()
            shutil.rmtree(cache.parent / "CMakeFiles", ignore_errors=True)


def cmake_build(source: Path) -> Path:
    """Configure (cheap when cached) and build llama + ggml; return the directory of the libs."""
    cmake = shutil.which("cmake")
    if not cmake:
        raise SystemExit("llamadiff: cmake is required to build llama.cpp (pip install cmake)")
    if vulkan_enabled():
        check_vulkan_toolchain()
    build_dir = ROOT / "build" / f"llama.cpp-{build_variant()}"
    cache = build_dir / "CMakeCache.txt"
    if cache.is_file() and "Ninja" in cache.read_text(errors="ignore") and not shutil.which("ninja"):
        shutil.rmtree(build_dir)  # generator changed: CMake cannot switch in place
    build_dir.mkdir(parents=True, exist_ok=True)
    drop_stale_sub_builds(build_dir)
    configure = [cmake, "-S", str(source), "-B", str(build_dir)] + cmake_configure_args(build_dir)
    log(" ".join(shlex.quote(a) for a in configure))
    run_cmake_step(configure, "CMake could not configure llama.cpp (its message is above)")
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
    run_cmake_step([cmake, "--build", str(build_dir), "--target", "llama", "-j", jobs],
                   "building llama.cpp failed (the compiler's message is above)")
    return build_dir / "bin"


def run_cmake_step(command: list[str], failure: str) -> None:
    """Run a CMake step; on failure, stop with `failure` and what a Vulkan build needs."""
    if subprocess.run(command).returncode != 0:
        hint = f" With LLAMADIFF_VULKAN=1 it needs {VULKAN_PACKAGES}." if vulkan_enabled() else ""
        raise SystemExit(f"llamadiff: {failure}.{hint}")


def runtime_libraries(lib_dir: Path) -> list[Path]:
    """The real library files, one per SONAME (wheels cannot hold symlinks)."""
    chosen = {}
    for pattern in LIB_GLOBS:
        for name in glob.glob(str(lib_dir / pattern)):
            path = Path(name)
            soname = soname_of(path)
            if soname:
                chosen[soname] = path.resolve()
    if "libllama.so.0" not in chosen and not any(k.startswith("libllama") for k in chosen):
        raise SystemExit(f"llamadiff: no libllama shared library in {lib_dir}")
    return [(soname, path) for soname, path in sorted(chosen.items())]


def soname_of(path: Path) -> str | None:
    if path.is_symlink() and not path.name.count(".so."):
        return None  # the dev symlink libfoo.so; its target is picked up under its SONAME
    try:
        out = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        out = ""
    for line in out.splitlines():
        if "(SONAME)" in line:
            return line.split("[", 1)[1].rstrip("]")
    # no readelf: the versioned name with a single number is the SONAME by convention
    parts = path.name.split(".so.")
    return f"{parts[0]}.so.{parts[1].split('.')[0]}" if len(parts) == 2 else None


# --------------------------------------------------------------------------- build_ext


class BuildExt(build_ext):
    """Build llama.cpp first, then the Cython extensions against it."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:       # the extensions are independent: compile them side by side
            self.parallel = int(os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or os.cpu_count() or 1)

    def run(self):
        source = prepare_source()
        lib_dir = cmake_build(source)
        include_dirs = [str(source / "include"), str(source / "ggml" / "include")]
        for ext in self.extensions:
            ext.include_dirs = include_dirs + list(ext.include_dirs)
            ext.library_dirs = [str(lib_dir)] + list(ext.library_dirs)
            if ext.name == "llamadiff.cuda._sampler":
                nvcc = find_nvcc()
                home = cuda_home(nvcc)
                ext.extra_objects = [str(compile_sampler(nvcc, cuda_archs()))]
                ext.include_dirs.append(str(home / "include"))
                ext.library_dirs += [str(d) for d in (home / "lib64", home / "targets" / "x86_64-linux" / "lib")
                                     if d.is_dir()]
            if cuda_enabled():
                ext.runtime_library_dirs = list(ext.runtime_library_dirs) + cuda_runtime_dirs()
                ext.extra_link_args = list(ext.extra_link_args or []) + cuda_rpath_link()

        super().run()

        package_dir = Path(self.get_ext_fullpath("llamadiff._core")).parent
        package_dir.mkdir(parents=True, exist_ok=True)
        # llama.cpp's HF -> GGUF converter, used by `llamadiff convert` (optional extra)
        convert_dir = package_dir / "_hf_convert"
        shutil.rmtree(convert_dir, ignore_errors=True)
        shutil.copytree(source / "conversion", convert_dir / "conversion",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copyfile(source / "convert_hf_to_gguf.py", convert_dir / "convert_hf_to_gguf.py")
        # the converter needs llama.cpp's own gguf-py (newer constants than the PyPI release)
        shutil.copytree(source / "gguf-py" / "gguf", convert_dir / "gguf",
                        ignore=shutil.ignore_patterns("__pycache__"))
        # headers for downstream Cython code that cimports llamadiff.llama / llamadiff._core
        headers = package_dir / "include"
        headers.mkdir(exist_ok=True)
        for inc in include_dirs:
            for header in Path(inc).glob("*.h"):
                if not (headers / header.name).exists() or \
                        (headers / header.name).read_bytes() != header.read_bytes():
                    shutil.copyfile(header, headers / header.name)
        if rpc_enabled():
            server = build_rpc_server(source, lib_dir)
            if server is not None and (not (package_dir / server.name).exists()
                                       or (package_dir / server.name).stat().st_mtime < server.stat().st_mtime):
                shutil.copy2(server, package_dir / server.name)
        for soname, path in runtime_libraries(lib_dir):
            target = package_dir / soname
            if not target.exists() or target.stat().st_mtime < path.stat().st_mtime \
                    or target.stat().st_size != path.stat().st_size:
                shutil.copy2(path, target)
                log(f"bundled {soname}")


def extension(name: str) -> Extension:
    if name == "cuda._sampler":
        # the GPU sampler: sampler.cu is compiled by nvcc in BuildExt and linked in, with the
        # static CUDA runtime (no libcudart to find at run time; a missing driver is an error
        # code, not a failed import)
        return Extension(
            "llamadiff.cuda._sampler",
            ["llamadiff/cuda/_sampler.pyx"],
            language="c++",
            libraries=["cudart_static", "dl", "rt", "pthread"],
            runtime_library_dirs=["$ORIGIN/.."],
            include_dirs=["llamadiff", "llamadiff/cuda"],
            extra_compile_args=["-O3", "-std=c++17", "-Wno-unused-function"],
        )
    return Extension(
        f"llamadiff.{name}",
        [f"llamadiff/{name}.pyx"],
        language="c++",
        libraries=["llama", "ggml", "ggml-base"],
        runtime_library_dirs=["$ORIGIN"],
        include_dirs=["llamadiff"],  # _kernels.h
        extra_compile_args=["-O3", "-std=c++17", "-fopenmp", "-Wno-unused-function"]
        + (["-march=native"] if env_flag("LLAMADIFF_NATIVE", True) else []),
        extra_link_args=["-fopenmp"],
    )


def cython_extensions(names: list[str]) -> list[Extension]:
    from Cython.Build import cythonize

    return cythonize(
        [extension(name) for name in names],
        # bounds/wraparound checks are switched off per module, in the hot loops only
        compiler_directives={"language_level": "3", "embedsignature": True},
        build_dir="build/cython",  # generated C++ stays out of the package
    )


# The Cython extension modules of the package, in build order: the one list (scripts/make_stubs.py
# reads it from here); cuda._sampler joins them in a CUDA build.
EXTENSIONS = ("_core", "_sampling", "policy", "engine", "_block", "_full", "_causal", "_canvas", "_backend")


setup(
    ext_modules=cython_extensions(list(EXTENSIONS) + (["cuda._sampler"] if cuda_sampler_enabled() else [])),
    cmdclass={"build_ext": BuildExt},
    setup_requires=cuda_build_requires(),
)

"""Build llamadiff: fetch the pinned llama.cpp, patch it, build it with CMake, then the Cython core.

Steps (each skipped when its output is already up to date, so an edit of a .pyx
rebuilds only the extension):

1. ``vendor/llama.cpp`` is filled from the PyPI sdist ``llama-cpp-python==0.3.36``
   (downloaded with pip, sha256-checked, only its ``vendor/llama.cpp/`` extracted), or
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
  LLAMADIFF_CUDA            1/0: build ggml with CUDA (GGML_CUDA); default 0
  LLAMADIFF_BUILD_TYPE      CMake build type; default Release
  LLAMADIFF_CACHE_DIR       where the downloaded sdist is kept; default ~/.cache/llamadiff
  CMAKE_ARGS                extra arguments passed to CMake's configure step
"""

from __future__ import annotations

import glob
import hashlib
import os
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


def fetch_sdist() -> Path:
    """Return a hash-checked copy of the pinned sdist, downloading it with pip if needed."""
    cached = cache_dir() / SDIST_FILE
    if cached.is_file() and sha256_of(cached) == SDIST_SHA256:
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # --no-binary only for this package (":all:" would make pip compile CMake from source
        # for the metadata step); no build isolation: scikit-build-core, which prepares the
        # sdist's metadata, is one of our own build requirements and so is already here.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", SDIST_NAME,
               "--no-build-isolation", "--disable-pip-version-check", "-d", tmp,
               f"{SDIST_NAME}=={SDIST_VERSION}"]
        log("downloading the llama.cpp source: " + " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / SDIST_FILE
        if proc.returncode != 0 or not got.is_file():
            raise SystemExit(
                f"llamadiff: could not download {SDIST_NAME}=={SDIST_VERSION} with pip "
                f"(exit {proc.returncode}); expected sha256 {SDIST_SHA256}, got no file.\n"
                f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}\n"
                "Set LLAMADIFF_LLAMA_CPP_DIR to an existing llama.cpp tree to build offline.")
        actual = sha256_of(got)
        if actual != SDIST_SHA256:
            raise SystemExit(
                f"llamadiff: sha256 mismatch for {SDIST_FILE}: expected {SDIST_SHA256}, "
                f"got {actual}. Refusing to build from an unverified source.")
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
    shutil.rmtree(LLAMA_DIR, ignore_errors=True)
    tmp.rename(LLAMA_DIR)
    return LLAMA_DIR


# --------------------------------------------------------------------------- CMake


def build_variant() -> str:
    return "cuda" if env_flag("LLAMADIFF_CUDA", False) else "cpu"


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
        f"-DGGML_CUDA={'ON' if env_flag('LLAMADIFF_CUDA', False) else 'OFF'}",
    ]
    ninja = shutil.which("ninja")
    if ninja:
        # Pin the generator program on every configure: a build environment made by pip
        # may be gone by the next build, and CMake would keep pointing at its ninja.
        args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    args += shlex.split(os.environ.get("CMAKE_ARGS", ""))
    return args


def cmake_build(source: Path) -> Path:
    """Configure (cheap when cached) and build llama + ggml; return the directory of the libs."""
    cmake = shutil.which("cmake")
    if not cmake:
        raise SystemExit("llamadiff: cmake is required to build llama.cpp (pip install cmake)")
    build_dir = ROOT / "build" / f"llama.cpp-{build_variant()}"
    cache = build_dir / "CMakeCache.txt"
    if cache.is_file() and "Ninja" in cache.read_text(errors="ignore") and not shutil.which("ninja"):
        shutil.rmtree(build_dir)  # generator changed: CMake cannot switch in place
    build_dir.mkdir(parents=True, exist_ok=True)
    configure = [cmake, "-S", str(source), "-B", str(build_dir)] + cmake_configure_args(build_dir)
    log(" ".join(shlex.quote(a) for a in configure))
    subprocess.run(configure, check=True)
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
    subprocess.run([cmake, "--build", str(build_dir), "--target", "llama", "-j", jobs], check=True)
    return build_dir / "bin"


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

    def run(self):
        source = prepare_source()
        lib_dir = cmake_build(source)
        include_dirs = [str(source / "include"), str(source / "ggml" / "include")]
        for ext in self.extensions:
            ext.include_dirs = include_dirs + list(ext.include_dirs)
            ext.library_dirs = [str(lib_dir)] + list(ext.library_dirs)

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
        for soname, path in runtime_libraries(lib_dir):
            target = package_dir / soname
            if not target.exists() or target.stat().st_mtime < path.stat().st_mtime \
                    or target.stat().st_size != path.stat().st_size:
                shutil.copy2(path, target)
                log(f"bundled {soname}")


def extension(name: str) -> Extension:
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


setup(
    ext_modules=cython_extensions(["_core", "_sampling", "_remask", "_block", "_full"]),
    cmdclass={"build_ext": BuildExt},
)

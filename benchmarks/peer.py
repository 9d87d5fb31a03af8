"""The peer users would pick instead: llama.cpp (through llama-cpp-python) on the same Hugging Face model,
converted to GGUF by llama.cpp's own convert_hf_to_gguf.py and quantized to Q4_K_M by llama.cpp's quantizer.

A benchmark extra (`pip install -e '.[bench-scale]'`), never a runtime dependency. The converter is not in
llama-cpp-python's wheel: it is read from the same version's source distribution (pip download), which vendors
llama.cpp. Timing runs in a child process (`python -m benchmarks.peer`, a JSON job on stdin) so that its peak
resident memory is its own, as slmops.eval.benchmark does for the other runtimes.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path

from slmops.eval.benchmark import Timing, peak_rss_mb, rss_mb, summarize

SDIST_PREFIX = "vendor/llama.cpp/"
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")

# x86 feature flags (/proc/cpuinfo's names) -> ggml's CMake option that compiles for them, in a build that is not
# -march=native (vendor/llama.cpp/ggml/src/ggml-cpu/CMakeLists.txt). AMX is left out on purpose: ggml's AMX
# kernels crash in the first llama_decode on virtualized Sapphire Rapids machines (llama.cpp issue #20824; seen
# here on an Azure VM), and a native build turns them on wherever the CPU reports AMX.
GGML_X86_OPTIONS = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_BMI2": ("bmi2",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512f", "avx512vbmi"),
    "GGML_AVX512_VNNI": ("avx512f", "avx512_vnni"),
    "GGML_AVX512_BF16": ("avx512f", "avx512_bf16"),
}
AMX_OPTIONS = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")


def cmake_args(machine: str, cpu_flags: set[str]) -> str:
    """CMAKE_ARGS that build llama-cpp-python for this CPU's instruction sets with AMX off (GGML_X86_OPTIONS), for
    an x86_64 `machine` with /proc/cpuinfo `cpu_flags`; empty (ggml's native build) on any other machine."""
    if machine not in ("x86_64", "AMD64"):
        return ""
    options = {name: all(flag in cpu_flags for flag in flags) for name, flags in GGML_X86_OPTIONS.items()}
    options |= dict.fromkeys(AMX_OPTIONS, False)
    return " ".join(["-DGGML_NATIVE=OFF"] + [f"-D{name}={'ON' if on else 'OFF'}" for name, on in options.items()])


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The first processor's feature flags in /proc/cpuinfo (empty where there is none)."""
    if not cpuinfo.is_file():
        return set()
    line = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


# The locally trained tokenizer hashes to no pre-tokenizer llama.cpp knows; the timed requests pass token ids, so
# the pre-tokenizer only names how llama.cpp would split text, and the family's own (qwen2) is the true answer.
CONVERT = """
import runpy, sys
sys.path[:0] = [{root!r} + "/gguf-py", {root!r}]
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre!r}
sys.argv = ["convert_hf_to_gguf.py", *{args!r}]
runpy.run_path({script!r}, run_name="__main__")
"""


def converter(cache: Path) -> Path:
    """llama.cpp's folder (convert_hf_to_gguf.py, conversion/, gguf-py/) from the installed llama-cpp-python's
    source distribution, downloaded once into cache. RuntimeError when pip cannot download it."""
    version = metadata.version("llama-cpp-python")
    root = cache / f"llama.cpp-{version}"
    if (root / "convert_hf_to_gguf.py").is_file():
        return root
    sdists = cache / "sdist"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(sdists)]
        + [f"llama-cpp-python=={version}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pip could not download llama-cpp-python {version}'s source:\n{result.stderr[-2000:]}")
    archive = next(sdists.glob(f"llama_cpp_python-{version}.tar.gz"))
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            inner = member.name.split("/", 1)[1] if "/" in member.name else ""
            if inner.startswith(SDIST_PREFIX) and inner[len(SDIST_PREFIX) :].startswith(CONVERTER_FILES):
                member.name = inner[len(SDIST_PREFIX) :]
                tar.extract(member, root, filter="data")
    return root


def convert(model_dir: Path, out: Path, cache: Path, pretokenizer: str = "qwen2") -> Path:
    """model_dir (a Hugging Face folder) to an f16 GGUF file `out` with llama.cpp's converter."""
    root = converter(cache)
    code = CONVERT.format(
        root=str(root),
        pre=pretokenizer,
        args=[str(model_dir), "--outfile", str(out), "--outtype", "f16"],
        script=str(root / "convert_hf_to_gguf.py"),
    )
    # The gguf-py vendored beside the script: the registry's gguf of the same version number lacks newer
    # architectures the converter's modules name (MODEL_ARCH.DFLASH); the pinned gguf only reads files here.
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(f"convert_hf_to_gguf.py failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return out


def quantize(source: Path, out: Path, ftype: str = "Q4_K_M") -> Path:
    """llama.cpp's quantizer (llama_model_quantize) from an f16 GGUF to `ftype` (a LLAMA_FTYPE_MOSTLY_* name)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = os.cpu_count() or 1
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if code != 0 or not out.is_file():
        raise RuntimeError(f"llama_model_quantize {source} -> {ftype} failed (code {code})")
    return out


def weight_bytes_per_token(gguf_file: Path) -> int:
    """Bytes of weights one decode step reads: every tensor, less the input embedding when the file has a
    separate output matrix (then a step reads one row of the embedding only)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(gguf_file).tensors}
    total = sum(tensors.values())
    if "output.weight" in tensors:
        total -= tensors.get("token_embd.weight", 0)
    return total


def time_llama(gguf_file: str, prompts: list[list[int]], max_new_tokens: int, threads: int) -> list[Timing]:
    """Greedy requests of exactly max_new_tokens tokens (the end token does not stop them), each from a fresh
    context state (no prefix reuse between requests)."""
    from llama_cpp import Llama

    context = max(len(p) for p in prompts) + max_new_tokens + 8
    llm = Llama(gguf_file, n_ctx=context, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    timings = []
    for prompt in prompts:
        llm.reset()
        start = time.perf_counter()
        first, tokens = None, 0
        for _ in llm.generate(prompt, temp=0.0, reset=True):
            tokens += 1
            first = first if first is not None else time.perf_counter() - start
            if tokens == max_new_tokens:
                break
        timings.append(Timing(time.perf_counter() - start, first, tokens))
    return timings


def measure(gguf_file: Path, prompts: list[list[int]], warmup: int, max_new_tokens: int) -> dict:
    """Time `prompts` (token ids) in a child process: summary figures as slmops.eval.benchmark.measure gives."""
    job = {"gguf": str(gguf_file), "prompts": prompts, "warmup": warmup, "max_new_tokens": max_new_tokens}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.peer"], input=json.dumps(job), capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"llama.cpp timing of {gguf_file} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _child() -> None:
    job = json.loads(sys.stdin.read())
    import llama_cpp  # before the weights, so that runtime_rss_mb holds it

    system = llama_cpp.llama_print_system_info().decode()
    if "AMX_INT8 = 1" in system:
        raise SystemExit(
            "this llama-cpp-python was built with ggml's AMX kernels, which crash in llama_decode on virtualized "
            "Sapphire Rapids CPUs (llama.cpp issue #20824); rebuild it without them:\n"
            f'CMAKE_ARGS="$(python -m benchmarks.peer --cmake-args)" pip install --force-reinstall --no-deps '
            f"--no-cache-dir llama-cpp-python=={metadata.version('llama-cpp-python')}"
        )
    runtime = rss_mb()
    timings = time_llama(job["gguf"], job["prompts"], job["max_new_tokens"], os.cpu_count() or 1)
    figures = summarize(timings[job["warmup"] :])
    figures |= {"peak_rss_mb": peak_rss_mb(), "runtime_rss_mb": runtime, "build": system.strip()}
    print(json.dumps(figures))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Child process of benchmarks.peer.measure: a JSON job on stdin.")
    parser.add_argument("--cmake-args", action="store_true", help="print the CMAKE_ARGS to build llama-cpp-python")
    if parser.parse_args().cmake_args:
        print(cmake_args(platform.machine(), cpu_flags()))
    else:
        _child()

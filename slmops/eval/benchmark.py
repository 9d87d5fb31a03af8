"""Latency, time to first token, decode rate and peak memory of one model, one request at a time.

Each variant is measured in a fresh child process (`python -m slmops.eval.benchmark`) so that its peak resident
memory is its own: a PyTorch variant pays for torch, an ONNX variant only for onnxruntime-genai.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata

import numpy as np


@dataclass
class Timing:
    seconds: float
    first_token_seconds: float
    tokens: int


def time_torch(model_dir: str, chats: list[list[dict]], max_new_tokens: int, dtype: str = "float32") -> list[Timing]:
    import torch
    from transformers.generation.streamers import BaseStreamer

    from slmops.models.hf import end_token_ids, load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_dir, getattr(torch, dtype))

    class FirstToken(BaseStreamer):
        """generate() puts the prompt first, then each new token: the second put is the first token."""

        def __init__(self):
            self.puts, self.first = 0, None

        def put(self, value):
            self.puts += 1
            if self.puts == 2:
                self.first = time.perf_counter()

        def end(self):
            pass

    timings = []
    with torch.inference_mode():
        for chat in chats:
            prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            streamer = FirstToken()
            start = time.perf_counter()
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                streamer=streamer,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=end_token_ids(tokenizer, model.generation_config),
            )
            seconds = time.perf_counter() - start
            tokens = out.shape[1] - batch["input_ids"].shape[1]
            timings.append(Timing(seconds, (streamer.first or time.perf_counter()) - start, tokens))
    return timings


def time_onnx(
    model_dir: str, chats: list[list[dict]], max_new_tokens: int, execution_provider: str = "cpu"
) -> list[Timing]:
    from slmops.onnx.runtime import OnnxChatModel

    model = OnnxChatModel(model_dir, execution_provider)
    # +1: the end token, which generate() above counts too
    return [
        Timing(a.seconds, a.first_token_seconds, a.tokens + 1)
        for a in (model.answer(chat, max_new_tokens) for chat in chats)
    ]


def latency_percentiles(latencies_ms: list[float]) -> dict:
    latency = np.array(latencies_ms)
    return {f"latency_p{q}_ms": float(np.percentile(latency, q)) for q in (50, 90, 95)}


def summarize(timings: list[Timing]) -> dict:
    """Percentiles of request latency and time to first token (ms), and the decode rate (tokens/s after the first)."""
    first = np.array([t.first_token_seconds for t in timings]) * 1000
    decode_tokens = sum(max(t.tokens - 1, 0) for t in timings)
    decode_seconds = sum(t.seconds - t.first_token_seconds for t in timings)
    return {
        **latency_percentiles([t.seconds * 1000 for t in timings]),
        "ttft_p50_ms": float(np.percentile(first, 50)),
        "decode_tokens_per_s": decode_tokens / decode_seconds if decode_seconds > 0 else 0.0,
        "requests": len(timings),
    }


TORCH_KINDS = {"torch": "float32", "torch-bf16": "bfloat16"}


def measure(
    kind: str,
    model_dir: str,
    chats: list[list[dict]],
    warmup: int,
    max_new_tokens: int,
    execution_provider: str = "cpu",
) -> dict:
    """Run in a child process: summary figures, each request's latency, the child's peak RSS and its resident
    memory with the runtime loaded but no model (runtime_rss_mb), and the difference, the model's own memory
    (model_rss_mb: weights, caches, activations), all in MB.
    kind: "onnx", "torch" (fp32) or "torch-bf16"."""
    payload = json.dumps(
        {
            "kind": kind,
            "model_dir": model_dir,
            "chats": chats,
            "warmup": warmup,
            "max_new_tokens": max_new_tokens,
            "execution_provider": execution_provider,
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "slmops.eval.benchmark"], input=payload, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"speed measurement of {model_dir} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's peak resident memory. Not getrusage: Linux keeps ru_maxrss across exec, so a child
    would report its parent's peak; VmHWM belongs to the current address space."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (peak memory is measured on Linux only)")


RUNTIMES = ("onnxruntime", "onnxruntime-genai", "torch", "transformers")


def hardware() -> dict:
    """What the speed figures were measured on: {"cpu": model name, "cores": logical CPUs, "gpu": names or None,
    "os": platform, "python": version, "runtimes": {distribution: version or None}}. Two runs' speed figures
    are comparable only when these match (and even then, only when timed in one run: `slmops bench compare`)."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "gpu": _gpus(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "runtimes": {name: _version(name) for name in RUNTIMES},
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str] | None:
    """NVIDIA GPUs by name (nvidia-smi); None when there is none or no driver."""
    if shutil.which("nvidia-smi") is None:
        return None
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
    )
    names = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    return names if result.returncode == 0 and names else None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def rss_mb() -> float:
    """This process's resident memory now (VmRSS), in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (memory is measured on Linux only)")


def _child() -> None:
    job = json.loads(sys.stdin.read())
    if job["kind"] in TORCH_KINDS:
        # The runtime before the weights, so that runtime_rss_mb holds it and not the model: torch with its CPU
        # kernels loaded (a first matmul), transformers' code for this architecture and for generate() imported
        # (transformers imports lazily; they are 90 MB of a tiny model's 110 MB otherwise counted as the model).
        import torch
        import transformers.generation.utils  # noqa: F401
        from transformers import AutoConfig
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(job["model_dir"]))]
        torch.ones(64, 64) @ torch.ones(64, 64)
        timer, extra = time_torch, {"dtype": TORCH_KINDS[job["kind"]]}
    else:
        import onnxruntime_genai  # noqa: F401

        timer, extra = time_onnx, {"execution_provider": job["execution_provider"]}
    runtime = rss_mb()
    timings = timer(job["model_dir"], job["chats"], job["max_new_tokens"], **extra)[job["warmup"] :]
    figures = summarize(timings)
    figures["peak_rss_mb"] = peak_rss_mb()
    figures["runtime_rss_mb"] = runtime
    figures["model_rss_mb"] = figures["peak_rss_mb"] - runtime
    figures["latencies_ms"] = [t.seconds * 1000 for t in timings]
    print(json.dumps(figures))


if __name__ == "__main__":
    argparse.ArgumentParser(
        description="Child process of slmops.eval.benchmark.measure: a JSON job on stdin."
    ).parse_args()
    _child()

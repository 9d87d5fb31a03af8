"""Scale profile: Qwen2.5-0.5B- and 1.5B-shaped random-weight models through the project's own quantize path
(slmops.onnx.export, with params.yaml's quantize options) and speed measurement (slmops.eval.benchmark), against
PyTorch fp32/bf16 and llama.cpp Q4_K_M, all timed in one run beside a copy-bandwidth measurement.

    make bench-scale      (python -m benchmarks.scale --cache DIR --out benchmarks/scale)

Writes OUT.json (every figure) and OUT.md (the table), then exits 1 when a goal at 0.5B is missed (size at most
0.15 of fp32, decode at least 85% of the bandwidth bound, at least as fast as llama.cpp). Models, exports and GGUF
files stay in --cache (outside git) and are reused by the next run.

Random weights: no accuracy figure here can say how well a trained model keeps its answers; greedy agreement and
logit differences against PyTorch fp32 are reported instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slmops.core.files import atomic_dir

ROOT = Path(__file__).resolve().parent.parent

# The published Qwen2.5 configurations (tied embeddings and rope_theta come with the qwen2 family of tests/families).
SHAPES = {
    "0.5b": {
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
    },
    "1.5b": {
        "hidden_size": 1536,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "intermediate_size": 8960,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
    },
}


@dataclass(frozen=True)
class Variant:
    """One export: params.yaml's quantize section with these keys changed."""

    name: str
    precision: str
    block_size: int
    embeddings: bool


VARIANTS = {
    v.name: v
    for v in (
        Variant("int4-emb-b32", "int4", 32, True),  # params.yaml's options
        Variant("int4-emb-b128", "int4", 128, True),
        Variant("int4-b32", "int4", 32, False),  # the builder's default: embedding table fp32
        Variant("int8-b32", "int8", 32, False),  # the project's int8 quantizes MatMuls only
    )
}
# 2 cores: the 1.5B model gets one export and no PyTorch fp32 timing (about 1 token/s).
PLAN = {
    "0.5b": {"variants": list(VARIANTS), "torch": ["torch", "torch-bf16"], "peer": True, "parity": True},
    "1.5b": {"variants": ["int4-emb-b128"], "torch": ["torch-bf16"], "peer": False, "parity": False},
}
GOAL_VARIANT = "int4-emb-b128"
GOALS = {"max_size_vs_fp32": 0.15, "min_bound_share": 0.85}
PROMPT_LENGTHS = (64, 512)


# ---- arithmetic (tests/test_bench_scale.py) ----


def bound_tokens_per_s(bandwidth_bytes_per_s: float, bytes_per_token: float) -> float:
    """The memory-bandwidth bound on decode: each token reads bytes_per_token once. ValueError for a non-positive
    byte count."""
    if bytes_per_token <= 0:
        raise ValueError(f"bytes per token must be positive, got {bytes_per_token}")
    return bandwidth_bytes_per_s / bytes_per_token


def kv_bytes_per_position(config: dict, dtype_bytes: int) -> int:
    """Bytes of key and value cache one position holds across all layers."""
    head = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head * dtype_bytes


def decode_bytes_per_token(weight_bytes: int, config: dict, kv_dtype_bytes: int, prompt: int, new_tokens: int) -> int:
    """Weights read per decode step plus the key/value cache read at the mean position of the decoded tokens."""
    mean_position = prompt + new_tokens / 2
    return int(weight_bytes + kv_bytes_per_position(config, kv_dtype_bytes) * mean_position)


ONNX_DTYPE_BYTES = {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 10: 2, 11: 8, 16: 2, 21: 0.5, 22: 0.5}
LOOKUP_OPS = {"Gather", "GatherBlockQuantized"}
FOLDED_OPS = {"Transpose", "Reshape", "Cast"}  # onnxruntime folds these on an initializer once, at load
GQA_TABLE_INPUTS = (7, 8)  # GroupQueryAttention's cos_cache, sin_cache: one row read a step


def onnx_weight_bytes_per_token(model) -> int:
    """Bytes of initializers one decode step of an onnx.ModelProto reads: all of them, except tables only looked
    up by row (an embedding a Gather reads one row of, directly or through a folded Transpose/Reshape/Cast, and the
    rotary caches), which count nothing. A table an LM head shares (shared_embeddings) is read whole."""
    sizes = {}
    for tensor in model.graph.initializer:
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        sizes[tensor.name] = int(count * ONNX_DTYPE_BYTES[tensor.data_type])
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))

    def looked_up(name: str) -> bool:
        uses = consumers.get(name, [])
        return bool(uses) and all(
            (node.op_type in LOOKUP_OPS and index != 1)  # the table, its scales and zero points
            or (node.op_type == "GroupQueryAttention" and index in GQA_TABLE_INPUTS)
            or (node.op_type in FOLDED_OPS and all(looked_up(out) for out in node.output))
            for node, index in uses
        )

    return sum(size for name, size in sizes.items() if name in consumers and not looked_up(name))


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Memory copy bandwidth in bytes/s, read plus write (STREAM's convention), best of `repeats` numpy copies of
    a `megabytes` array: the ceiling a decode step's weight reads run against."""
    source = np.ones(megabytes * 2**20, dtype=np.uint8)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best


# ---- goals and table ----


def goal_failures(rows: list[dict], goals: dict = GOALS, variant: str = GOAL_VARIANT) -> list[str]:
    """Why the 0.5B profile misses its goals (empty when it meets them): `variant`'s size against fp32 and share of
    the bandwidth bound, and its decode rate against llama.cpp's when that was timed. ValueError when `variant`
    was not measured."""
    by_name = {row["name"]: row for row in rows}
    if variant not in by_name:
        raise ValueError(f"no row for {variant}; measured: {', '.join(by_name)}")
    row = by_name[variant]
    failures = []
    if row["size_vs_fp32"] > goals["max_size_vs_fp32"]:
        failures.append(f"{variant} is {row['size_vs_fp32']:.3f} of fp32 (goal: at most {goals['max_size_vs_fp32']})")
    if row["bound_share"] < goals["min_bound_share"]:
        failures.append(
            f"{variant} decodes at {row['bound_share']:.0%} of the bandwidth bound "
            f"(goal: at least {goals['min_bound_share']:.0%})"
        )
    peer = by_name.get("llama.cpp-Q4_K_M")
    if peer and row["decode_tokens_per_s"] < peer["decode_tokens_per_s"]:
        failures.append(
            f"{variant} decodes {row['decode_tokens_per_s']:.1f} tokens/s, llama.cpp Q4_K_M "
            f"{peer['decode_tokens_per_s']:.1f}"
        )
    return failures


TEACHER_STUDENT = (("1.5b", "pytorch-bf16"), ("0.5b", GOAL_VARIANT))


def teacher_student_memory(sizes: dict, pair=TEACHER_STUDENT) -> dict | None:
    """Memory the shipped student saves against its teacher: the 1.5B model in PyTorch bf16 against the 0.5B int4
    export, each as the model's own memory (peak resident less the runtime's resident before the weights) and as
    the whole process's peak. None when either row was not measured."""
    rows = [next((r for r in sizes.get(size, {}).get("rows", []) if r["name"] == name), None) for size, name in pair]
    if None in rows or any(row.get("model_rss_mb") is None for row in rows):
        return None
    teacher, student = rows
    return {
        "teacher": f"{pair[0][0]} {pair[0][1]}",
        "student": f"{pair[1][0]} {pair[1][1]}",
        **{
            f"{kind}_mb": {"teacher": teacher[key], "student": student[key], "saved": 1 - student[key] / teacher[key]}
            for kind, key in (("model", "model_rss_mb"), ("process", "peak_rss_mb"))
        },
    }


COLUMNS = (
    ("name", "variant", "{}"),
    ("size_mb", "size MB", "{:,.0f}"),
    ("size_vs_fp32", "÷ fp32", "{:.3f}"),
    ("size_vs_fp16", "÷ fp16", "{:.3f}"),
    ("decode_tokens_per_s", "decode tok/s", "{:.1f}"),
    ("bound_tokens_per_s", "bound tok/s", "{:.1f}"),
    ("bound_share", "of bound", "{:.0%}"),
    ("ttft_64_ms", "TTFT 64 ms", "{:,.0f}"),
    ("ttft_512_ms", "TTFT 512 ms", "{:,.0f}"),
    ("peak_rss_mb", "peak RSS MB", "{:,.0f}"),
    ("model_rss_mb", "model MB", "{:,.0f}"),
    ("greedy_agreement", "greedy = fp32", "{:.0%}"),
    ("bandwidth_gb_s", "copy GB/s", "{:.1f}"),
)


def render_table(rows: list[dict]) -> str:
    """A markdown table of the rows (a dash where a row lacks a figure)."""
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "–" for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(result: dict) -> str:
    parts = [
        "# Scale profile (`make bench-scale`)",
        "",
        f"Measured {result['date']} on {result['hardware']['cpu']} ({result['hardware']['cores']} cores). "
        "Random-weight models. Bound: the copy bandwidth (read + write, numpy) measured right after the row's timing, "
        "over the bytes a decode step reads (weights, and the key/value cache at the mean decoded position).",
    ]
    for size, section in result["sizes"].items():
        parts += ["", f"## {size} ({section['parameters'] / 1e6:,.0f} M parameters)", "", render_table(section["rows"])]
    if memory := result.get("teacher_student"):
        parts += [
            "",
            f"## Memory: {memory['teacher']} teacher against {memory['student']} student",
            "",
            "| memory | teacher MB | student MB | saved |",
            "|---|---|---|---|",
        ]
        for kind, title in (("model", "the model's own (peak less the runtime's)"), ("process", "process peak")):
            figures = memory[f"{kind}_mb"]
            parts.append(
                f"| {title} | {figures['teacher']:,.0f} | {figures['student']:,.0f} | {figures['saved']:.1%} |"
            )
    verdict = ("MISSED" if result["failures"] else "met") if result["goals_checked"] else "not checked in this run"
    parts += ["", f"Goals at 0.5B ({GOAL_VARIANT}): {verdict}"]
    parts += [f"- {failure}" for failure in result["failures"]]
    return "\n".join(parts) + "\n"


# ---- the run ----


def build_model(size: str, folder: Path) -> Path:
    """A random-weight Qwen2.5-`size`-shaped model with a locally trained tokenizer (tests/families.py)."""
    if (folder / "config.json").is_file():
        return folder
    sys.path.insert(0, str(ROOT / "tests"))
    from families import build

    with atomic_dir(folder) as partial:
        build("qwen2", partial, **SHAPES[size])
    return folder


def bf16_checkpoint(model_dir: Path, folder: Path) -> Path:
    """model_dir's model and tokenizer saved with bfloat16 weights, as published checkpoints are: loading the fp32
    checkpoint as bf16 would hold both copies at once, and the bf16 row's peak memory would count the fp32 one."""
    import torch

    from slmops.models.hf import load_model_and_tokenizer

    if (folder / "config.json").is_file():
        return folder
    model, tokenizer = load_model_and_tokenizer(model_dir, torch.bfloat16)
    with atomic_dir(folder) as partial:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    return folder


EXPORT_RECORD = "bench-scale-quantize.json"  # the quantize section an export in the cache was made with


def export_variant(model_dir: Path, variant: Variant, out: Path) -> Path:
    """The project's export (slmops.onnx.export) with params.yaml's quantize section, `variant`'s keys changed.
    A cached export is reused only when it was made with the same section."""
    import shutil
    import tempfile

    from slmops.core.params import parse_params
    from slmops.onnx.export import export

    quantize = parse_params((ROOT / "params.yaml").read_text(), check_paths=False).quantize
    config = quantize.model_copy(
        update={"precision": variant.precision, "block_size": variant.block_size, "embeddings": variant.embeddings}
    )
    record = json.dumps(config.model_dump(), sort_keys=True)
    if (out / EXPORT_RECORD).is_file() and (out / EXPORT_RECORD).read_text() == record:
        return out
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=out.parent) as scratch, atomic_dir(out) as partial:
        export(model_dir, partial, config, Path(scratch))  # as stages/quantize.py does
        (partial / EXPORT_RECORD).write_text(record)
    return out


def prompt_chat(tokenizer, length: int) -> tuple[list[dict], list[int]]:
    """A one-message chat whose rendered prompt is `length` tokens (the template's own tokens included), and its
    ids. ValueError when the template alone is longer."""
    sys.path.insert(0, str(ROOT / "tests"))
    from families import corpus

    words = " ".join(corpus()).split()

    def ids(n: int) -> list[int]:
        chat = [{"role": "user", "content": " ".join(words[:n])}]
        text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        return chat, tokenizer(text, add_special_tokens=False)["input_ids"]

    if len(ids(0)[1]) > length:
        raise ValueError(f"the chat template alone is longer than {length} tokens")
    low, high = 0, len(words)
    while low < high:  # the most words whose prompt fits in `length`
        middle = (low + high + 1) // 2
        low, high = (middle, high) if len(ids(middle)[1]) <= length else (low, middle - 1)
    chat, prompt = ids(low)
    return chat, prompt


def timed(kind: str, target: Path, chats: dict, args) -> dict:
    """Decode rate and TTFT at 64 tokens, TTFT at 512, peak and model memory: two child processes."""
    from slmops.eval.benchmark import measure

    torch_kind = kind.startswith("torch")
    new = args.torch_new_tokens if torch_kind else args.new_tokens
    repeats = args.torch_repeats if torch_kind else args.repeats
    short = measure(kind, str(target), [chats[64][0]] * (1 + repeats), warmup=1, max_new_tokens=new)
    long = measure(kind, str(target), [chats[512][0]] * 2, warmup=1, max_new_tokens=2)
    return figures(short, long, new)


def figures(short: dict, long: dict, new_tokens: int) -> dict:
    peak = max(short["peak_rss_mb"], long["peak_rss_mb"])
    return {
        "decode_tokens_per_s": short["decode_tokens_per_s"],
        "new_tokens": new_tokens,
        "ttft_64_ms": short["ttft_p50_ms"],
        "ttft_512_ms": long["ttft_p50_ms"],
        "peak_rss_mb": peak,
        "runtime_rss_mb": long["runtime_rss_mb"],
        "model_rss_mb": peak - long["runtime_rss_mb"],
    }


def sized(row: dict, size_bytes: int, fp32_bytes: int) -> dict:
    return row | {
        "size_mb": size_bytes / 1e6,
        "size_vs_fp32": size_bytes / fp32_bytes,
        "size_vs_fp16": size_bytes / (fp32_bytes / 2),
    }


def bounded(row: dict, bytes_per_token: int) -> dict:
    """The row with its bandwidth bound, from a copy bandwidth measured now, right after its timing (the machine
    may be shared: the bound moves with what else runs)."""
    bandwidth = copy_bandwidth()
    bound = bound_tokens_per_s(bandwidth, bytes_per_token)
    row = row | {
        "bandwidth_gb_s": bandwidth / 1e9,
        "bytes_per_token": bytes_per_token,
        "bound_tokens_per_s": bound,
        "bound_share": row["decode_tokens_per_s"] / bound,
    }
    log(
        f"{row['name']}: {row['size_mb']:,.0f} MB ({row['size_vs_fp32']:.3f} of fp32), "
        f"{row['decode_tokens_per_s']:.1f} tokens/s ({row['bound_share']:.0%} of {bound:.1f}), "
        f"TTFT {row['ttft_64_ms']:,.0f}/{row['ttft_512_ms']:,.0f} ms, peak {row['peak_rss_mb']:,.0f} MB"
    )
    return row


def parity(model_dir: Path, exports: dict[str, Path], chats: list[list[dict]], new_tokens: int) -> dict[str, dict]:
    """Greedy next-token agreement and max |logit difference| of each export against PyTorch fp32
    (slmops.onnx.parity, teacher-forced on PyTorch's greedy answers)."""
    from slmops.models.hf import load_model_and_tokenizer
    from slmops.onnx.parity import check_parity, parity_inputs
    from slmops.onnx.runtime import OnnxChatModel

    model, tokenizer = load_model_and_tokenizer(model_dir)
    prompts, answers = parity_inputs(model, tokenizer, chats, new_tokens)
    out = {}
    for name, folder in exports.items():
        result = check_parity(model, OnnxChatModel(folder), prompts, answers)
        out[name] = {"greedy_agreement": result.greedy_agreement, "max_abs_logit_diff": result.max_abs_logit_diff}
    return out


def profile(size: str, args) -> dict:
    import onnx
    from transformers import AutoTokenizer

    from slmops.onnx.export import folder_size

    cache = args.cache / size
    cache.mkdir(parents=True, exist_ok=True)
    plan = PLAN[size]
    log(f"{size}: model")
    model_dir = build_model(size, cache / "hf")
    config = json.loads((model_dir / "config.json").read_text())
    fp32_bytes = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    parameters = fp32_bytes // 4
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chats = {n: prompt_chat(tokenizer, n) for n in PROMPT_LENGTHS}
    rows = []
    exports = {}
    for name in [v for v in plan["variants"] if not args.variants or v in args.variants]:
        log(f"{size}: export {name}")
        folder = exports[name] = export_variant(model_dir, VARIANTS[name], cache / name)
        log(f"{size}: time {name}")
        weights = onnx_weight_bytes_per_token(onnx.load(str(folder / "model.onnx"), load_external_data=False))
        row = {"name": name, "runtime": "onnxruntime-genai"} | timed("onnx", folder, chats, args)
        row = sized(row, folder_size(folder), fp32_bytes)
        per_token = decode_bytes_per_token(weights, config, 4, len(chats[64][1]), args.new_tokens)
        rows.append(bounded(row, per_token))
    for kind in [] if args.skip_torch else plan["torch"]:
        log(f"{size}: time {kind}")
        dtype_bytes = 4 if kind == "torch" else 2
        row = {"name": f"pytorch-{'fp32' if kind == 'torch' else 'bf16'}", "runtime": "torch"}
        checkpoint = model_dir if kind == "torch" else bf16_checkpoint(model_dir, cache / "hf-bf16")
        row = sized(row | timed(kind, checkpoint, chats, args), fp32_bytes * dtype_bytes // 4, fp32_bytes)
        per_token = decode_bytes_per_token(
            parameters * dtype_bytes, config, dtype_bytes, len(chats[64][1]), args.torch_new_tokens
        )
        rows.append(bounded(row, per_token))
    peer_error = None
    if plan["peer"] and not args.skip_peer:
        try:
            rows.append(peer_row(model_dir, cache, chats, config, fp32_bytes, args))
        except RuntimeError as err:  # keep the rows measured so far; the run still fails (see main)
            peer_error = str(err).splitlines()[0]
            log(f"llama.cpp: {peer_error}")
    if plan["parity"] and not args.skip_parity:
        log(f"{size}: parity against PyTorch fp32")
        agreement = parity(model_dir, exports, [chats[64][0]] * 1 + [chats[512][0]], args.parity_tokens)
        rows = [row | agreement.get(row["name"], {}) for row in rows]
    shape = {k: config[k] for k in SHAPES[size]}
    return {"parameters": parameters, "config": shape, "rows": rows, "peer_error": peer_error}


def peer_row(model_dir: Path, cache: Path, chats: dict, config: dict, fp32_bytes: int, args):
    from benchmarks import peer

    log("llama.cpp: convert and quantize")
    f16 = cache / "model-f16.gguf"
    if not f16.is_file():
        peer.convert(model_dir, f16, args.cache)
    q4 = cache / "model-Q4_K_M.gguf"
    if not q4.is_file():
        peer.quantize(f16, q4)
    log("llama.cpp: time")
    short = peer.measure(q4, [chats[64][1]] * (1 + args.repeats), 1, args.new_tokens)
    long = peer.measure(q4, [chats[512][1]] * 2, 1, 2)
    row = {"name": "llama.cpp-Q4_K_M", "runtime": "llama.cpp"} | figures(short, long, args.new_tokens)
    row = sized(row, q4.stat().st_size, fp32_bytes)
    per_token = decode_bytes_per_token(
        peer.weight_bytes_per_token(q4), config, 2, len(chats[64][1]), args.new_tokens
    )  # llama.cpp's cache is f16
    return bounded(row, per_token)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0.5b,1.5b", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache/slmops/bench-scale")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/scale", help="writes OUT.json and OUT.md")
    parser.add_argument("--new-tokens", type=int, default=64, help="decoded tokens a timed request (ONNX, llama.cpp)")
    parser.add_argument("--repeats", type=int, default=3, help="timed requests (ONNX, llama.cpp), after one warm-up")
    parser.add_argument("--torch-new-tokens", type=int, default=16)
    parser.add_argument("--torch-repeats", type=int, default=2)
    parser.add_argument("--parity-tokens", type=int, default=16)
    parser.add_argument("--skip-peer", action="store_true", help="no llama.cpp (needs the bench-scale extra)")
    parser.add_argument("--skip-torch", action="store_true", help="no PyTorch timings")
    parser.add_argument("--skip-parity", action="store_true", help="no greedy agreement against PyTorch fp32")
    parser.add_argument("--variants", default="", help=f"comma-separated subset of {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in args.sizes if s not in SHAPES]
    if unknown or not args.sizes:
        parser.error(f"--sizes: unknown size {', '.join(unknown) or '(none given)'}; choose from {', '.join(SHAPES)}")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := [v for v in args.variants if v not in VARIANTS]:
        parser.error(f"--variants: unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    for name in ("new_tokens", "repeats", "torch_new_tokens", "torch_repeats", "parity_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    from slmops.eval.benchmark import hardware

    args = parse_args(argv)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "hardware": hardware() | {"llama-cpp-python": _version("llama-cpp-python")},
        "goals": GOALS | {"variant": GOAL_VARIANT},
        "sizes": {},
    }
    for size in args.sizes:
        result["sizes"][size] = profile(size, args)
    half = result["sizes"].get("0.5b")
    measured = half and any(row["name"] == GOAL_VARIANT for row in half["rows"])
    result["failures"] = goal_failures(half["rows"]) if measured else []
    result["goals_checked"] = bool(measured)
    result["teacher_student"] = teacher_student_memory(result["sizes"])
    result["failures"] += [
        f"llama.cpp ({size}): {s['peer_error']}" for size, s in result["sizes"].items() if s["peer_error"]
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    report = render_report(result)
    args.out.with_suffix(".md").write_text(report)
    print(report)
    return 1 if result["failures"] else 0


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())

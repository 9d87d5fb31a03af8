"""ONNX export and quantization for onnxruntime-genai: the model builder or an Olive workflow (slmops.onnx.parity
checks the result).

The builder has no int8: int8 is an fp32 build whose MatMul weights onnxruntime's MatMulNBitsQuantizer
then quantizes to 8 bits (the same quantizer the builder uses for int4).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from slmops.core.config import Quantize
from slmops.core.errors import InputError

GENAI_FILES = ("genai_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def builder_options(config: Quantize, tied_embeddings: bool) -> dict[str, str]:
    """The builder's --extra_options for int4 (it has no knobs for the float precisions)."""
    if config.precision != "int4":
        return {}
    options = {
        "int4_block_size": str(config.block_size),
        "int4_is_symmetric": str(config.symmetric).lower(),
        "int4_accuracy_level": str(config.accuracy_level),
    }
    if config.embeddings:
        options["int4_op_types_to_quantize"] = "MatMul/Gather"
        options["int4_algo_config"] = "rtn"  # the builder shares quantized embeddings only with rtn or k_quant
        if tied_embeddings:
            options["shared_embeddings"] = "true"
    return options


def tied_embeddings(model_dir: str | Path) -> bool:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return bool(config.get("tie_word_embeddings", False))


def run_builder(model_dir: Path, out_dir: Path, config: Quantize, cache_dir: Path) -> None:
    """`python -m onnxruntime_genai.models.builder` on a local Hugging Face folder, then int8 if asked."""
    command = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(model_dir.resolve()),
        "-o",
        str(out_dir.resolve()),
        "-p",
        config.build_precision,
        "-e",
        config.execution_provider,
        "-c",
        str(cache_dir.resolve()),
    ]
    options = builder_options(config, tied_embeddings(model_dir))
    if options:
        command += ["--extra_options", *(f"{k}={v}" for k, v in options.items())]
    _run(command, "onnxruntime-genai model builder", cwd=cache_dir)
    if config.precision == "int8":
        quantize_int8(out_dir, config)


def quantize_int8(folder: Path, config: Quantize) -> None:
    """Quantize the MatMul weights of folder/model.onnx to 8-bit blocks in place."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(folder / "model.onnx"))
    quantizer = MatMulNBitsQuantizer(
        model, bits=8, block_size=config.block_size, is_symmetric=config.symmetric, accuracy_level=config.accuracy_level
    )
    quantizer.process()
    for stale in folder.glob("model.onnx*"):
        stale.unlink()
    quantizer.model.save_model_to_file(str(folder / "model.onnx"), use_external_data_format=True)


OLIVE_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "dml": "DmlExecutionProvider"}


def olive_workflow(model_dir: str, out_dir: str, cache_dir: str, config: Quantize) -> dict:
    """An Olive workflow: ModelBuilder, plus 8-bit block-wise RTN for int8. Run it with absolute paths from
    an empty directory: Olive reads a value that names an existing relative path as that path."""
    build = {"type": "ModelBuilder", "precision": config.build_precision}
    options = builder_options(config, tied_embeddings(model_dir))
    if options:
        build |= {
            "int4_block_size": config.block_size,
            "int4_is_symmetric": config.symmetric,
            "int4_accuracy_level": config.accuracy_level,
        }
        if config.embeddings:
            build |= {
                "int4_op_types_to_quantize": ["MatMul", "Gather"],
                "int4_algo_config": "rtn",
                "extra_options": {k: v for k, v in options.items() if k == "shared_embeddings"},
            }
    passes = {"build": build}
    if config.precision == "int8":
        # Olive 0.13's RTN pass renames the graph output `logits` of a quantized lm_head to `logits_Q8`,
        # which onnxruntime-genai cannot find; the LM head stays fp32 on this engine.
        passes["int8"] = {
            "type": "OnnxBlockWiseRtnQuantization",
            "bits": 8,
            "block_size": config.block_size,
            "is_symmetric": config.symmetric,
            "accuracy_level": config.accuracy_level,
            "nodes_to_exclude": ["/lm_head/MatMul"],
        }
    device = "cpu" if config.execution_provider == "cpu" else "gpu"
    return {
        "input_model": {"type": "HfModel", "model_path": model_dir},
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [
                    {"device": device, "execution_providers": [OLIVE_PROVIDERS[config.execution_provider]]}
                ],
            }
        },
        "passes": passes,
        "host": "local_system",
        "target": "local_system",
        "cache_dir": cache_dir,
        "output_dir": out_dir,
        "log_severity_level": 1,
    }


def run_olive(workflow_file: Path, out_dir: Path) -> None:
    """`olive run` from an empty directory, with CI=1 (no telemetry wait without network)."""
    with tempfile.TemporaryDirectory(prefix="olive-run-") as neutral:
        _run(
            [sys.executable, "-m", "olive", "run", "--config", str(workflow_file.resolve())],
            "olive run",
            cwd=Path(neutral),
            env={**os.environ, "CI": "1"},
        )
    # Olive can exit 0 without writing a model when a pass fails; a missing model is the failure.
    if not (out_dir / "model.onnx").is_file():
        raise RuntimeError(f"olive run exited 0 but wrote no model.onnx in {out_dir}; see the log above")


def _run(command: list[str], what: str, cwd: Path, env: dict | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{tail}")


def copy_genai_files(source: Path, dest: Path) -> None:
    """Copy the files onnxruntime-genai needs (model, weights, config, tokenizer) from source to dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.name.startswith("model.onnx") or path.name in GENAI_FILES:
            shutil.copy2(path, dest / path.name)
    missing = [name for name in ("model.onnx", *GENAI_FILES) if not (dest / name).is_file()]
    if missing:
        raise RuntimeError(f"the export in {source} lacks {', '.join(missing)}")


def set_session_options(genai_config: Path, config: Quantize) -> None:
    """Write config.intra_op_num_threads into genai_config.json's model.decoder.session_options, which every
    onnxruntime-genai runtime of the folder reads (slmops serve, Foundry Local). Unset, onnxruntime-genai gives a
    session hardware_concurrency() / 2 threads (src/models/model.cpp, CreateSessionOptionsFromConfig), counting
    on two hardware threads a core: one thread on a 2-vCPU machine without SMT, where a Qwen2.5-0.5B-shaped int4
    export then decoded 29 tokens/s against 54 with 0 (onnxruntime's own default: one per physical core)."""
    genai = json.loads(genai_config.read_text())
    genai["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = config.intra_op_num_threads
    genai_config.write_text(json.dumps(genai, indent=4) + "\n")


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def require_local_model(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: no Hugging Face model here (config.json missing); run the finetune stage first")


def check_head_size(folder: Path, execution_provider: str) -> None:
    """InputError when onnxruntime's CPU GroupQueryAttention kernel cannot run the model: it needs a head size
    (head_dim, or hidden_size / num_attention_heads) that is a multiple of 16, and fails only at the first answer."""
    config = json.loads((folder / "config.json").read_text())
    heads = config.get("num_attention_heads")
    head = config.get("head_dim") or (config["hidden_size"] // heads if heads and "hidden_size" in config else None)
    if execution_provider == "cpu" and head and head % 16:
        raise InputError(
            f"{folder / 'config.json'}: head size {head} (head_dim, or hidden_size / num_attention_heads) is not a "
            "multiple of 16, which onnxruntime's GroupQueryAttention needs on the CPU; for student.config choose "
            "hidden_size and num_attention_heads whose quotient is 16, 32, 64 or 128"
        )


def write_workflow(path: Path, workflow: dict) -> None:
    path.write_text(json.dumps(workflow, indent=2) + "\n")


# The saved Olive workflow names repository-relative paths, so `olive run` works from any clone's root.
OLIVE_RERUN = {"model_dir": "models/finetuned", "out_dir": "olive-output", "cache_dir": ".olive-cache"}


def export(model_dir: Path, out: Path, config: Quantize, scratch: Path) -> None:
    """Export the Hugging Face folder `model_dir` into `out` (genai_config.json, model.onnx[.data], tokenizer) with
    the engine config.engine names: the onnxruntime-genai model builder, or an Olive workflow, which is then saved
    as out/olive_config.json for rerunning; config.intra_op_num_threads goes into genai_config.json. `scratch`: an
    empty folder for intermediate files. RuntimeError when an engine fails or writes no model."""
    built = scratch / "export"
    if config.engine == "builder":
        run_builder(model_dir, built, config, scratch)
    else:
        workflow = olive_workflow(str(model_dir.resolve()), str(built), str(scratch / "cache"), config)
        write_workflow(scratch / "olive_config.json", workflow)
        run_olive(scratch / "olive_config.json", built)
        write_workflow(out / "olive_config.json", olive_workflow(**OLIVE_RERUN, config=config))
    copy_genai_files(built, out)
    set_session_options(out / "genai_config.json", config)

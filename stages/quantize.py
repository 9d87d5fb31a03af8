"""Stage quantize: export the fine-tuned model to ONNX for onnxruntime-genai, quantized, parity-checked.

    python -m stages.quantize      (dvc repro quantize)

engine builder: the onnxruntime-genai model builder; engine olive: an Olive workflow, saved as
models/onnx/olive_config.json (rerun it from the repository root with `olive run --config ...`).
Writes models/onnx/ (genai_config.json, model.onnx[.data], tokenizer, quantize.json) and reports/quantize.json.
A parity check against the PyTorch model on eval prompts must pass, or the stage fails and writes nothing.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from slmops.core.errors import exits_2_on_input_error
from slmops.core.files import atomic_dir, write_json
from slmops.core.params import load_params
from slmops.core.task import load_task, read_labelled
from slmops.models.hf import load_model_and_tokenizer
from slmops.onnx.export import check_head_size, export, folder_size, require_local_model
from slmops.onnx.parity import check_parity, parity_inputs
from slmops.onnx.runtime import OnnxChatModel

FINETUNED = Path("models/finetuned")
OUT = Path("models/onnx")
METRICS = Path("reports/quantize.json")
log = logging.getLogger("stages.quantize")


@exits_2_on_input_error
def main() -> None:
    params = load_params()
    quantize = params.quantize
    require_local_model(FINETUNED)
    check_head_size(FINETUNED, quantize.execution_provider)
    task = load_task(params.task.dir)
    rows = read_labelled(params.data.eval, task)[: quantize.parity.prompts]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quantize-") as scratch, atomic_dir(OUT) as out:
        export(FINETUNED, out, quantize, Path(scratch))
        export_seconds = time.perf_counter() - started

        torch_model, tokenizer = load_model_and_tokenizer(FINETUNED)
        prompts, answers = parity_inputs(
            torch_model,
            tokenizer,
            [task.messages(r["message"]) for r in rows],
            params.evaluate.generation.max_new_tokens,
        )
        parity = check_parity(torch_model, OnnxChatModel(out, quantize.execution_provider), prompts, answers)
        log.info("parity: %s", parity)
        failure = parity.failure(
            quantize.precision, quantize.parity.max_abs_logit_diff, quantize.parity.min_greedy_agreement
        )
        if failure:
            raise SystemExit(f"quantize: parity check failed: {failure}")
        record = {
            "engine": quantize.engine,
            "precision": quantize.precision,
            "execution_provider": quantize.execution_provider,
            "export_seconds": round(export_seconds, 2),
            "size_bytes": folder_size(out),
            "parity": vars(parity),
        }
        write_json(out / "quantize.json", record)
    write_json(METRICS, record)


if __name__ == "__main__":
    main()

"""Stage package: the Foundry Local model folder models/foundry/<name>/, verified.

    python -m stages.package       (dvc repro package)

Holds the quantized model with genai_config.json, the tokenizer and its chat template, inference_model.json
(Name, PromptTemplate), task.json, a model card (README.md) and manifest.json (SHA-256 and size of every
file). The stage then runs `slmops package verify` on it: hashes, onnxruntime-genai, Foundry Local.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from slmops.core.errors import InputError, exits_2_on_input_error
from slmops.core.files import atomic_dir, write_json
from slmops.core.params import load_params
from slmops.core.task import load_task, read_labelled
from slmops.foundry.package import inference_model, task_record, write_manifest
from slmops.foundry.verify import verify
from slmops.onnx.export import keep_genai_files
from slmops.onnx.runtime import OnnxChatModel
from slmops.report.card import model_card
from slmops.report.run import git_revision

ONNX = Path("models/onnx")
REPORTS = Path("reports")
FOUNDRY = Path("models/foundry")


def read_report(name: str) -> dict:
    path = REPORTS / name
    if not path.is_file():
        raise InputError(f"{path}: missing; run `dvc repro` to produce it")
    return json.loads(path.read_text())


@exits_2_on_input_error
def main() -> None:
    params = load_params()
    package = params["package"]
    task = load_task(params["task"]["dir"])
    metrics, teacher, synthesize = (read_report(n) for n in ("metrics.json", "teacher.json", "synthesize.json"))
    if not (ONNX / "genai_config.json").is_file():
        raise InputError(f"{ONNX}: no exported model; run the quantize stage first")
    name, version = package["name"], package["version"]
    with atomic_dir(FOUNDRY) as root:
        out = root / name
        keep_genai_files(ONNX, out)
        write_json(out / "inference_model.json", inference_model(name, OnnxChatModel(out)))
        write_json(out / "task.json", task_record(task))
        (out / "README.md").write_text(model_card(name, version, task, params, metrics, teacher, synthesize,
                                                  git_revision()))
        manifest = write_manifest(out, name, version)
        example = read_labelled(params["data"]["eval"], task)[0]["message"]
        result = verify(out, task.messages(example), package["verify"]["max_output_tokens"])
        print(f"package {out.name}: {result.files} files verified; onnxruntime-genai answered "
              f"{result.genai_answer!r}; Foundry Local answered {result.foundry_answer!r}", file=sys.stderr)
    write_json(REPORTS / "package.json", {"name": name, "version": version, "files": len(manifest["files"]),
                                          "bytes": sum(f["bytes"] for f in manifest["files"]),
                                          "verified": True})


if __name__ == "__main__":
    main()

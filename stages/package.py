"""Stage package: the Foundry Local model folder models/foundry/<name>/, verified.

    python -m stages.package       (dvc repro package)

Holds the quantized model with genai_config.json, the tokenizer and its chat template, inference_model.json
(Name, PromptTemplate), task.json, a model card (README.md) and manifest.json (SHA-256 and size of every
file). The stage then runs `slmops package verify` on it: hashes, onnxruntime-genai, Foundry Local.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from slmops.core.errors import InputError, exits_2_on_input_error
from slmops.core.files import atomic_dir, write_json
from slmops.core.params import load_params
from slmops.core.task import load_task, read_labelled
from slmops.foundry.package import build_package
from slmops.foundry.verify import verify
from slmops.report.card import model_card
from slmops.report.run import git_revision

ONNX = Path("models/onnx")
REPORTS = Path("reports")
FOUNDRY = Path("models/foundry")
log = logging.getLogger("stages.package")


def read_report(name: str) -> dict:
    path = REPORTS / name
    if not path.is_file():
        raise InputError(f"{path}: missing; run `dvc repro` to produce it")
    return json.loads(path.read_text())


@exits_2_on_input_error
def main() -> None:
    params = load_params()
    package = params.package
    task = load_task(params.task.dir)
    metrics, teacher, synthesize = (read_report(n) for n in ("metrics.json", "teacher.json", "synthesize.json"))
    if not (ONNX / "genai_config.json").is_file():
        raise InputError(f"{ONNX}: no exported model; run the quantize stage first")
    name, version = package.name, package.version
    card = model_card(name, version, task, params, metrics, teacher, synthesize, git_revision())
    example = read_labelled(params.data.eval, task)[0]["message"]
    with atomic_dir(FOUNDRY) as root:
        manifest = build_package(root / name, ONNX, name, version, task, card)
        result = verify(root / name, task.messages(example), package.verify.max_output_tokens)
        log.info(
            "package %s: %d files verified; onnxruntime-genai answered %r; Foundry Local answered %r",
            name,
            result.files,
            result.genai_answer,
            result.foundry_answer,
        )
    write_json(
        REPORTS / "package.json",
        {
            "name": name,
            "version": version,
            "files": len(manifest["files"]),
            "bytes": sum(f["bytes"] for f in manifest["files"]),
            "verified": True,
        },
    )


if __name__ == "__main__":
    main()

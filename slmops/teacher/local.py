"""Local teachers: pin an existing Hugging Face model (hf backend); load a pinned teacher, refusing changed weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import AutoTokenizer

from slmops.core.errors import InputError
from slmops.models.hf import (
    hash_weights,
    load_model_and_tokenizer,
    resolve_model,
)

IDENTITY_FILE = "teacher.json"
GENERATION_CONFIG = "generation_config.json"


def pin_hf(model: str, revision: str | None, out_dir: Path) -> dict:
    """Record name, revision and weights hash of an existing model; keep a copy of its tokenizer and of its
    generation config (its end token ids, which a student built on the tokenizer must share)."""
    folder, commit = resolve_model(model, revision, "teacher.model")
    identity = {
        "backend": "hf",
        "source": model if commit else str(folder.resolve()),
        "revision": commit or revision,
        "weights_sha256": hash_weights(folder),
    }
    AutoTokenizer.from_pretrained(folder).save_pretrained(out_dir)
    if (folder / GENERATION_CONFIG).is_file():
        shutil.copy(folder / GENERATION_CONFIG, out_dir / GENERATION_CONFIG)
    (out_dir / IDENTITY_FILE).write_text(json.dumps(identity, indent=2) + "\n")
    return identity


def pinned_folder(teacher_dir: str | Path) -> tuple[Path, dict]:
    """(model folder, identity) of the teacher the teacher stage pinned in `teacher_dir`: the folder itself for a
    bootstrap teacher, the pinned local folder or hub snapshot for an hf one. InputError when it is not pinned or
    its weights changed since."""
    teacher_dir = Path(teacher_dir)
    identity_path = teacher_dir / IDENTITY_FILE
    if not identity_path.is_file():
        raise InputError(f"{identity_path}: not found; run the teacher stage first (dvc repro teacher)")
    identity = json.loads(identity_path.read_text())
    if identity["backend"] == "bootstrap":
        folder = teacher_dir
    else:
        folder, _ = resolve_model(identity["source"], identity["revision"], f"{identity_path}: source")
    if hash_weights(folder) != identity["weights_sha256"]:
        raise InputError(f"{folder}: weights differ from those pinned in {identity_path}; rerun the teacher stage")
    return folder, identity


def load_teacher(teacher_dir: str | Path):
    """(model, tokenizer, identity) of the teacher the teacher stage pinned; refuses changed weights."""
    folder, identity = pinned_folder(teacher_dir)
    model, tokenizer = load_model_and_tokenizer(folder)
    return model, tokenizer, identity

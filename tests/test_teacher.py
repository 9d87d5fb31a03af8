import json

import pytest
import torch

from slmops.core.errors import InputError
from slmops.models.hf import hash_weights
from slmops.teacher.local import load_teacher, pin_hf, pinned_folder


def test_hf_backend_pins_a_local_model_and_refuses_changed_weights(tiny_model, tokenizer, tmp_path):
    source = tmp_path / "my-teacher"
    tiny_model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path / "models-teacher"
    out.mkdir()
    identity = pin_hf(str(source), None, out)
    assert identity == json.loads((out / "teacher.json").read_text())
    assert identity["backend"] == "hf" and identity["source"] == str(source.resolve())
    assert identity["weights_sha256"] == hash_weights(source)
    assert (out / "tokenizer.json").is_file() and not list(out.glob("*.safetensors"))  # pinned, not copied
    # the end token ids, for a student built on the teacher's tokenizer
    assert json.loads((out / "generation_config.json").read_text()) == json.loads(
        (source / "generation_config.json").read_text()
    )
    assert pinned_folder(out) == (source, identity)  # what evaluate runs and times for the teacher

    model, loaded_tokenizer, loaded_identity = load_teacher(out)
    assert loaded_identity == identity and loaded_tokenizer.chat_template == tokenizer.chat_template

    with torch.no_grad():
        next(tiny_model.parameters()).add_(0.5)
    tiny_model.save_pretrained(source)
    with pytest.raises(InputError, match="weights differ from those pinned"):
        load_teacher(out)


def test_load_teacher_before_the_teacher_stage_says_what_to_run(tmp_path):
    with pytest.raises(InputError, match=r"run the teacher stage first \(dvc repro teacher\)"):
        load_teacher(tmp_path)

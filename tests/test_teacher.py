import json

import pytest
import torch
from conftest import TINY_TEACHER, default

from slmops.core.errors import InputError
from slmops.models.hf import hash_weights
from slmops.teacher.augment import stated_fields, swap_stated_values
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


def test_copy_accuracy_counts_the_stated_values_the_answers_give(task, labelled, monkeypatch):
    from slmops.models.generate import Answer
    from slmops.teacher import bootstrap

    rows = [r for r in labelled if len(stated_fields(r)) == 2][:2]  # an order id and a product each
    first = dict(rows[0]["label"])
    second = {**rows[1]["label"], "order_id": "ORD-00", "product": None}
    answers = [Answer(json.dumps(first), [], True), Answer(json.dumps(second), [], True)]
    monkeypatch.setattr(bootstrap, "generate_answers", lambda *args, **kwargs: answers)
    assert bootstrap.copy_accuracy(None, None, task, rows) == 0.5
    answers[0] = Answer(json.dumps(first)[:-1], [], False)  # cut short: no answer, nothing copied
    assert bootstrap.copy_accuracy(None, None, task, rows) == 0.0


def test_bootstrap_trains_again_from_the_next_seed_until_the_copy_check_passes(task, labelled, tmp_path, capsys):
    from slmops.teacher.bootstrap import bootstrap

    rows = swap_stated_values(labelled[:32], 1, 0)
    check = [r for r in swap_stated_values(labelled[:32], 1, 1)[32:] if stated_fields(r)][:4]
    params = default(
        "teacher.bootstrap",
        vocab_size=400,
        restarts=2,
        min_copy_accuracy=1.0,
        config={**TINY_TEACHER, "num_hidden_layers": 1},
        train=default("teacher.bootstrap.train", epochs=1),
    )
    failing = bootstrap(task, rows, check, params, 5, tmp_path / "a", tmp_path / "live-a")
    assert (failing["attempts"], failing["trained_seed"]) == (3, 7) and failing["copy_accuracy"] < 1.0
    out = capsys.readouterr().out
    assert "teacher attempt 3: seed 7" in out and "after 3 attempts the teacher copies" in out
    passing = bootstrap(
        task, rows, check, params.model_copy(update={"min_copy_accuracy": 0.0}), 5, tmp_path / "b", tmp_path / "live-b"
    )
    assert (passing["attempts"], passing["trained_seed"]) == (1, 5)
    assert hash_weights(tmp_path / "a") != hash_weights(tmp_path / "b")  # the last attempt's model is the one kept

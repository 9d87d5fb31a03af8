import json

from conftest import ROOT

from slmops import taskgen


def messages(path):
    return [json.loads(line)["message"].lower() for line in path.read_text().splitlines()]


def test_eval_set_shares_no_message_with_the_training_data():
    eval_messages = set(messages(ROOT / "data/eval/eval.jsonl"))
    train_messages = set(messages(ROOT / "data/seed/labelled.jsonl")) | set(
        messages(ROOT / "data/prompts/unlabelled.jsonl")
    )
    assert len(eval_messages) == 300
    assert not eval_messages & train_messages


def test_committed_data_is_what_the_generator_writes(tmp_path):
    taskgen.main(["--out", str(tmp_path)])
    for name in ("seed/labelled.jsonl", "prompts/unlabelled.jsonl", "eval/eval.jsonl"):
        assert (tmp_path / name).read_text() == (ROOT / "data" / name).read_text(), name


def test_labels_match_the_answer_schema(task):
    from slmops.core.task import read_labelled

    assert len(read_labelled(ROOT / "data/seed/labelled.jsonl", task)) == 600
    assert len(read_labelled(ROOT / "data/eval/eval.jsonl", task)) == 300


def test_every_stated_order_id_and_product_appears_in_its_message():
    for row in taskgen.generate(seed=1, n_seed=200, n_prompts=0, n_eval=0)["seed"]:
        label = row["label"]
        if label["order_id"]:
            assert label["order_id"] in row["message"]
        if label["product"]:
            assert label["product"] in row["message"]

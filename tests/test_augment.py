import random

from slmops.augment import same_shape, swap_stated_values

ROWS = [
    {"id": "a", "message": "refund the laptop from order A-4821 please", "label": {"order_id": "A-4821", "product": "laptop", "urgency": "low"}},
    {"id": "b", "message": "where is my phone case", "label": {"order_id": None, "product": "phone case", "urgency": "low"}},
]


def test_same_shape_keeps_character_classes():
    value = same_shape("A-4821", random.Random(0))
    assert len(value) == 6 and value[0].isupper() and value[1] == "-" and value[2:].isdigit()


def test_copies_keep_message_and_label_consistent():
    out = swap_stated_values(ROWS, copies=5, seed=0)
    assert out[:2] == ROWS and len(out) == 12
    for row in out:
        label = row["label"]
        if label["order_id"]:
            assert label["order_id"] in row["message"]
        assert label["product"] in row["message"]
        assert label["urgency"] == "low"  # not stated verbatim: untouched
    ids = {row["label"]["order_id"] for row in out if row["label"]["order_id"]}
    assert len(ids) > 3  # fresh ids, not the one seen
    assert {row["label"]["product"] for row in out} <= {"laptop", "phone case"}


def test_augmentation_is_deterministic():
    assert swap_stated_values(ROWS, 3, seed=1) == swap_stated_values(ROWS, 3, seed=1)
    assert swap_stated_values(ROWS, 3, seed=1) != swap_stated_values(ROWS, 3, seed=2)

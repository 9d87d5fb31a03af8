import random

from slmops.teacher.augment import fresh_digits, swap_stated_values

ROWS = [
    {
        "id": "a",
        "message": "refund the laptop from order ORD-48 please",
        "label": {"order_id": "ORD-48", "product": "laptop", "urgency": "low"},
    },
    {
        "id": "b",
        "message": "where is my phone case",
        "label": {"order_id": None, "product": "phone case", "urgency": "low"},
    },
]


def test_fresh_digits_keeps_character_classes():
    values = {fresh_digits("ORD-48", random.Random(seed)) for seed in range(10)}
    assert len(values) > 5
    assert all(v.startswith("ORD-") and len(v) == 6 and v[4:].isdigit() for v in values)


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

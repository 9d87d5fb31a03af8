"""Deterministic generator of the embedded customer-support triage data.

    python -m slmops.taskgen --out data --seed 7

Writes data/seed/labelled.jsonl (human-labelled seed set), data/prompts/unlabelled.jsonl
(messages only) and data/eval/eval.jsonl (held-out, labelled). Every message is unique across
the three files. Labels come first; the message is then written to carry cues for each label.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PRODUCTS = [
    "headphones",
    "laptop",
    "phone case",
    "charger",
    "smartwatch",
    "keyboard",
    "monitor",
    "blender",
    "coffee maker",
    "vacuum",
    "backpack",
    "sneakers",
    "tablet",
    "speaker",
    "camera",
]

# Each intent: message bodies. {p} is the product phrase, {o} the order phrase.
INTENTS = {
    "refund_request": [
        "I want a refund for the {p}{o}",
        "please refund my money for the {p}{o}",
        "the {p}{o} is not what I expected, I would like my money back",
        "can I get a refund on the {p}{o}",
        "I returned the {p}{o} and still have no refund",
    ],
    "order_status": [
        "where is my {p}{o}",
        "my {p}{o} has not arrived yet",
        "can you tell me when the {p}{o} will be delivered",
        "what is the status of the {p}{o}",
        "tracking for the {p}{o} has not updated in days",
    ],
    "cancel_order": [
        "please cancel the {p}{o}",
        "I need to cancel my order for the {p}{o}",
        "I changed my mind, cancel the {p}{o}",
        "stop the order of the {p}{o} before it ships",
    ],
    "technical_issue": [
        "the {p}{o} stopped working",
        "my {p}{o} will not turn on",
        "the {p}{o} keeps disconnecting",
        "the {p}{o} makes a strange noise and then shuts off",
        "I cannot get the {p}{o} to charge",
    ],
    "billing_question": [
        "I was charged twice for the {p}{o}",
        "why is there an extra fee on my bill for the {p}{o}",
        "the price I paid for the {p}{o} is wrong",
        "can you explain the charge for the {p}{o}",
    ],
    "change_address": [
        "I need to change the delivery address for the {p}{o}",
        "please ship the {p}{o} to my new address",
        "I moved, can you update where the {p}{o} goes",
    ],
    "product_question": [
        "does the {p} come with a warranty",
        "is the {p} available in black",
        "how long does the battery of the {p} last",
        "is the {p} compatible with my other devices",
    ],
    "account_access": [
        "I cannot log in to my account",
        "I forgot my password and the reset email never comes",
        "my account is locked",
        "I cannot sign in since the last update",
    ],
}
PRODUCTLESS_INTENTS = {"account_access"}
ORDERLESS_INTENTS = {"product_question", "account_access"}

URGENCY_CUES = {
    "high": [
        "this is urgent",
        "I need this fixed today",
        "please help asap",
        "it is an emergency",
        "I need an answer right now",
    ],
    "medium": ["please get back to me soon", "I would like an answer this week", "let me know when you can", ""],
    "low": ["no rush", "whenever you have time", "it is not urgent", "take your time"],
}
SENTIMENT_CUES = {
    "negative": [
        "this is ridiculous",
        "I am very disappointed",
        "worst service ever",
        "I am really angry",
        "this is unacceptable",
    ],
    "neutral": ["", "thanks", "regards"],
    "positive": [
        "I love your shop",
        "thank you so much, you are great",
        "your team has always been wonderful",
        "I really appreciate your help",
    ],
}
GREETINGS = ["", "", "hi,", "hello,", "hey", "good morning,", "dear support,"]
ORDER_PHRASES = [" from order {id}", " (order {id})", ", order number {id},", " in order {id}", " #{id}"]


def order_id(rng: random.Random) -> str:
    # Two digits: the bootstrap models, small enough to train in minutes on a CPU, learn to copy a
    # number that is one token; see slmops.models.hf.train_chat_tokenizer.
    return f"ORD-{rng.randint(10, 99)}"


def typo(word: str, rng: random.Random) -> str:
    """Swap two neighbouring letters: the kind of slip people make on a phone."""
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randint(1, len(word) - 3)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def add_typos(text: str, protected: set[str], rng: random.Random, rate: float) -> str:
    words = text.split(" ")
    return " ".join(w if w in protected or rng.random() > rate else typo(w, rng) for w in words)


def make_example(rng: random.Random) -> dict:
    intent = rng.choice(list(INTENTS))
    urgency = rng.choice(["low", "medium", "medium", "high"])
    sentiment = rng.choice(["negative", "neutral", "neutral", "positive"])
    product = None if intent in PRODUCTLESS_INTENTS or rng.random() < 0.1 else rng.choice(PRODUCTS)
    oid = None if intent in ORDERLESS_INTENTS or rng.random() < 0.3 else order_id(rng)

    body = rng.choice(INTENTS[intent])
    product_phrase = product if product else rng.choice(["item", "thing I bought", "order"])
    order_phrase = rng.choice(ORDER_PHRASES).format(id=oid) if oid else ""
    body = body.format(p=product_phrase, o=order_phrase)

    parts = [
        rng.choice(GREETINGS),
        body + rng.choice([".", "!", "", "?"] if sentiment != "negative" else ["!", "!!", "."]),
    ]
    cues = [rng.choice(URGENCY_CUES[urgency]), rng.choice(SENTIMENT_CUES[sentiment])]
    rng.shuffle(cues)
    parts += [c + "." for c in cues if c]
    text = " ".join(p for p in parts if p)
    protected = set((product or "").split()) | {oid or ""} | {f"#{oid}", f"({oid})", f"{oid},", f"{oid}."}
    text = add_typos(text, protected, rng, rate=0.04)
    style = rng.random()
    if style < 0.1 and sentiment == "negative":
        text = text.upper().replace((oid or "@").upper(), oid or "@")
        for word in (product or "").split():
            text = text.replace(word.upper(), word)
    elif style < 0.4:
        text = text[0].upper() + text[1:]
    label = {"intent": intent, "order_id": oid, "product": product, "urgency": urgency, "sentiment": sentiment}
    return {"message": text, "label": label}


def generate(seed: int, n_seed: int, n_prompts: int, n_eval: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    sets: dict[str, list[dict]] = {}
    for name, size in (("eval", n_eval), ("seed", n_seed), ("prompts", n_prompts)):
        rows = []
        while len(rows) < size:
            example = make_example(rng)
            key = example["message"].lower()
            if key not in seen:
                seen.add(key)
                rows.append(example)
        sets[name] = rows
    return sets


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps({"id": f"{path.parent.name}-{i:05d}", **row}) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--n-seed", type=int, default=600)
    parser.add_argument("--n-prompts", type=int, default=4000)
    parser.add_argument("--n-eval", type=int, default=300)
    args = parser.parse_args(argv)
    sets = generate(args.seed, args.n_seed, args.n_prompts, args.n_eval)
    write_jsonl(args.out / "seed" / "labelled.jsonl", sets["seed"])
    write_jsonl(args.out / "prompts" / "unlabelled.jsonl", [{"message": r["message"]} for r in sets["prompts"]])
    write_jsonl(args.out / "eval" / "eval.jsonl", sets["eval"])


if __name__ == "__main__":
    main()

"""The second test task's data, meetings/*.jsonl, written deterministically: python tests/data/tasks/make_meetings.py"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).parent / "meetings"
ROOMS = ["Orion", "Vega", "Lyra", "Atlas", "Nova", "Polaris"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Femi", "Gus", "Hana"]
# Per action, message templates: {room} "the Orion room" or "a room", {day}, {n} a count, {who} the invitees.
TEMPLATES = {
    "book": [
        "please book {room} on {day} for {n} people{who}",
        "can you reserve {room} for {n} on {day}{who}",
        "we need {room} on {day}, {n} of us{who}",
    ],
    "cancel": [
        "please cancel our {day} meeting in {room}, {n} people{who}",
        "cancel the meeting for {n} on {day} in {room}{who}",
    ],
    "move": ["move our meeting for {n} in {room} to {day}{who}", "can we shift {room} to {day} for {n} people{who}"],
}


def example(rng: random.Random) -> dict:
    action = rng.choice(sorted(TEMPLATES))
    room = rng.choice([*ROOMS, None])
    day = rng.choice(DAYS)
    invitees = rng.sample(NAMES, rng.randint(0, 3))
    n = rng.randint(len(invitees) + 1, 12)
    who = (", invite " + " and ".join(invitees)) if invitees else ""
    text = rng.choice(TEMPLATES[action]).format(room=f"the {room} room" if room else "a room", day=day, n=n, who=who)
    label = {"action": action, "room": room, "day": day, "attendees": n, "invitees": invitees}
    return {"message": text[0].upper() + text[1:] + ".", "label": label}


def generate(seed: int = 11, sizes: tuple[int, int, int] = (150, 150, 40)) -> dict[str, list[dict]]:
    """labelled, prompts (messages only) and eval rows; no message repeats across the three."""
    rng, seen, rows = random.Random(seed), set(), []
    while len(rows) < sum(sizes):
        row = example(rng)
        if row["message"] not in seen:
            seen.add(row["message"])
            rows.append(row)
    labelled, prompts, held_out = rows[: sizes[0]], rows[sizes[0] : sizes[0] + sizes[1]], rows[sum(sizes[:2]) :]
    return {"labelled": labelled, "prompts": [{"message": r["message"]} for r in prompts], "eval": held_out}


def main(out: Path = OUT) -> None:
    for name, rows in generate().items():
        lines = [json.dumps({"id": f"meet-{name}-{i:05d}", **row}) + "\n" for i, row in enumerate(rows)]
        (out / f"{name}.jsonl").write_text("".join(lines))


if __name__ == "__main__":
    main()

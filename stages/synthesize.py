"""Stage synthesize: the teacher answers the unlabelled prompts -> data/synthetic/.

    python -m stages.synthesize      (dvc repro synthesize)

accepted.jsonl holds schema-valid answers, rejected.jsonl the others with the reason; with
synthesize.logprobs_top_k > 0 the teacher's top-k log-probs per answer token are stored beside them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from slmops.errors import InputError, exits_2_on_input_error
from slmops.generation import GenerationConfig
from slmops.io import atomic_dir, read_jsonl, write_json
from slmops.params import load_params
from slmops.synthesize import label_prompts, write_synthetic
from slmops.task import load_task
from slmops.teacher import load_teacher

OUT = Path("data/synthetic")
METRICS = Path("reports/synthesize.json")


@exits_2_on_input_error
def main() -> None:
    params = load_params()
    synth = params["synthesize"]
    task = load_task(params["task"]["dir"])
    prompts = read_jsonl(params["data"]["prompts"], required=("message",))[: synth["limit"]]
    model, tokenizer, identity = load_teacher("models/teacher")
    torch.manual_seed(params["seed"])
    config = GenerationConfig(**synth["generation"], seed=params["seed"])
    accepted, rejected, answers, stats = label_prompts(model, tokenizer, task, prompts, config, synth["logprobs_top_k"])
    if not accepted:
        raise InputError(f"the teacher produced no schema-valid answer for {len(prompts)} prompts; first reason: {rejected[0]['reason']}")
    with atomic_dir(OUT) as out:
        write_synthetic(out, accepted, rejected, answers, tokenizer, synth["logprobs_top_k"], identity)
    write_json(METRICS, stats)


if __name__ == "__main__":
    main()

"""Stage synthesize: the teacher answers the unlabelled prompts -> data/synthetic/.

    python -m stages.synthesize      (dvc repro synthesize)

accepted.jsonl holds the answers the answer parser accepts (slmops.core.answers), rejected.jsonl the others with
the reason and its kind (content_filter, length, no_json, schema, ...; counted in reports/synthesize.json).
A local teacher (bootstrap, hf) can also store its top-k log-probs per answer token (synthesize.logprobs_top_k).
An endpoint teacher (openai) is asked concurrently through the response cache; usage and cost go to the metrics.
With synthesize.mode generate_and_label the teacher first writes new prompts from seed examples.
"""

from __future__ import annotations

from pathlib import Path

from slmops.core.errors import InputError, exits_2_on_input_error
from slmops.core.files import atomic_dir, read_jsonl, write_json, write_jsonl
from slmops.core.params import load_params
from slmops.core.task import load_task
from slmops.teacher.labelling import teacher_for, with_written_prompts

TEACHER = Path("models/teacher")
OUT = Path("data/synthetic")
METRICS = Path("reports/synthesize.json")


@exits_2_on_input_error
def main() -> None:
    params = load_params()
    task = load_task(params.task.dir)
    prompts = read_jsonl(params.data.prompts, required=("message",))[: params.synthesize.limit]
    teacher = teacher_for(params, TEACHER)
    prompts, written, stats = with_written_prompts(teacher, params, task, prompts)
    accepted, rejected, label_stats = teacher.label(task, prompts, params.synthesize.generation)
    if not accepted:
        raise InputError(
            f"the teacher produced no valid answer for {len(rejected)} prompts "
            f"({', '.join(f'{n} x {kind}' for kind, n in label_stats['rejected_by'].items())}); "
            f"first reason: {rejected[0]['reason']}"
        )
    with atomic_dir(OUT) as out:
        teacher.save(out, accepted, rejected)
        if written:
            write_jsonl(out / "written_prompts.jsonl", written)
    write_json(METRICS, {**stats, **label_stats})


if __name__ == "__main__":
    main()

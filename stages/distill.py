"""Stage distill: train the student on the teacher's answers -> models/student/.

    python -m stages.distill      (dvc repro distill)

Loss = alpha * CE on the canonical answer of each label + (1 - alpha) * T^2 * KD on the teacher's stored top-k
log-probs (forward KL, reverse KL or JSD), for the answers whose raw text is that canonical answer (so that the
log-probs belong to its tokens; the others are counted and trained on CE only).
Loss curves: reports/train/distill (dvc plots show). Processes and checkpoints: params `training`
(slmops.train.parallel; with more than one process this re-launches itself under torchrun).
"""

from __future__ import annotations

import json
from pathlib import Path

from slmops.core.errors import exits_2_on_input_error
from slmops.core.files import atomic_dir, read_jsonl, write_json
from slmops.core.params import load_params
from slmops.core.task import load_task
from slmops.models.hf import count_parameters
from slmops.train.logprobs import LogProbReader
from slmops.train.parallel import check_batch_split, checkpoint_dir, is_main_process, relaunched, remove_checkpoints
from slmops.train.student import distillation_examples, make_student, use_logit_kd
from slmops.train.trainer import run_fingerprint, train

SYNTHETIC = Path("data/synthetic")
TEACHER = Path("models/teacher")
OUT = Path("models/student")
METRICS = Path("reports/distill.json")
LIVE_DIR = Path("reports/train/distill")


@exits_2_on_input_error
def main() -> None:
    params = load_params()
    distill = params.distill
    check_batch_split(distill.train.batch_size, params.training, "distill.train.batch_size")
    if relaunched("stages.distill", params.training):
        return
    task = load_task(params.task.dir)
    meta = json.loads((SYNTHETIC / "meta.json").read_text())
    accepted = read_jsonl(SYNTHETIC / "accepted.jsonl", required=("message", "answer", "label"))
    model, tokenizer = make_student(params.student, TEACHER, params.seed)
    kd_on = use_logit_kd(distill.kd, meta, tokenizer)
    examples = distillation_examples(task, tokenizer, accepted, LogProbReader(SYNTHETIC) if kd_on else None)
    with_logprobs = sum("kd_ids" in example for example in examples)
    if kd_on and with_logprobs < len(examples):
        print(
            f"{len(examples) - with_logprobs} of {len(examples)} teacher answers differ from their canonical answer "
            "(reasoning, prose, a fence or spacing dropped by the answer parser): cross-entropy only for those"
        )
    kd = distill.kd if kd_on else None
    run = run_fingerprint(model, examples, distill.train, kd, params.seed, params.training)
    stats = train(
        model,
        tokenizer,
        examples,
        distill.train,
        params.seed,
        LIVE_DIR,
        kd=kd,
        accumulation=params.training.gradient_accumulation_steps,
        checkpoints=checkpoint_dir("distill", run),
        checkpoint_steps=params.training.checkpoint_steps,
    )
    if not is_main_process():
        return
    with atomic_dir(OUT) as out:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    write_json(
        METRICS,
        {
            **stats,
            "parameters": count_parameters(model),
            "examples": len(examples),
            "logit_kd": kd_on,
            "logit_kd_examples": with_logprobs,
        },
    )
    remove_checkpoints("distill")
    print(f"wrote {OUT} and {METRICS} ({stats['world_size']} process(es))")


if __name__ == "__main__":
    main()

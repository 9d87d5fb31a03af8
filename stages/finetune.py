"""Stage finetune: adapt the distilled student to the human-labelled set.

    python -m stages.finetune      (dvc repro finetune)

lora / qlora: trains a peft adapter -> models/adapter/, merges it -> models/finetuned/.
none: trains all weights -> models/finetuned/; models/adapter/ then holds only finetune.json.
Processes and checkpoints: params `training` (slmops.train.parallel; with more than one process this re-launches
itself under torchrun).
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, set_seed

from slmops.core.errors import exits_2_on_input_error
from slmops.core.files import atomic_dir, write_json
from slmops.core.params import load_params
from slmops.core.task import load_task, read_labelled
from slmops.train.data import sft_examples
from slmops.train.lora import check_method_runs_here, load_base, merged_model, trainable_parameters, with_adapter
from slmops.train.parallel import check_batch_split, checkpoint_dir, is_main_process, relaunched, remove_checkpoints
from slmops.train.trainer import run_fingerprint, train

STUDENT = Path("models/student")
OUT = Path("models/finetuned")
ADAPTER = Path("models/adapter")
METRICS = Path("reports/finetune.json")
LIVE_DIR = Path("reports/train/finetune")


@exits_2_on_input_error
def main() -> None:
    params = load_params()
    finetune = params.finetune
    method = finetune.method
    check_method_runs_here(method)
    check_batch_split(finetune.train.batch_size, params.training, "finetune.train.batch_size")
    if relaunched("stages.finetune", params.training):
        return
    task = load_task(params.task.dir)
    rows = read_labelled(params.data.labelled, task)
    tokenizer = AutoTokenizer.from_pretrained(STUDENT)
    set_seed(params.seed)  # the adapter's initial weights are random
    base = load_base(STUDENT, method)
    model = base if method == "none" else with_adapter(base, finetune.lora)
    trainable, total = trainable_parameters(model)
    examples = sft_examples(task, tokenizer, rows)
    run = run_fingerprint(model, examples, method, finetune.train, params.seed, params.training)
    stats = train(
        model,
        tokenizer,
        examples,
        finetune.train,
        params.seed,
        LIVE_DIR,
        accumulation=params.training.gradient_accumulation_steps,
        checkpoints=checkpoint_dir("finetune", run),
        checkpoint_steps=params.training.checkpoint_steps,
    )
    if not is_main_process():
        return
    record = {**stats, "method": method, "trainable_parameters": trainable, "total_parameters": total}
    with atomic_dir(ADAPTER) as adapter, atomic_dir(OUT) as out:
        if method != "none":
            model.save_pretrained(adapter)
            model = merged_model(STUDENT, adapter)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        write_json(adapter / "finetune.json", record)
    write_json(METRICS, record)
    remove_checkpoints("finetune")
    print(f"wrote {OUT}, {ADAPTER} and {METRICS} ({stats['world_size']} process(es))")


if __name__ == "__main__":
    main()

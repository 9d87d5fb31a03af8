"""Stage teacher: make the teacher available and record its identity.

    python -m stages.teacher      (dvc repro teacher)

bootstrap: trains a tokenizer and a small Llama on the labelled seed set -> models/teacher/.
hf: pins an existing model (local folder or hub id) by name, revision and weights hash.
openai: records the endpoint (base URL without credentials, model or deployment, API version) and the model
it reports serving; one one-token request checks the credentials.
"""

from __future__ import annotations

from pathlib import Path

from slmops.core.errors import exits_2_on_input_error
from slmops.core.files import atomic_dir, write_json
from slmops.core.params import load_params
from slmops.core.task import load_task, read_labelled
from slmops.teacher.augment import stated_fields, swap_stated_values
from slmops.teacher.bootstrap import bootstrap
from slmops.teacher.endpoint import Endpoint, probe
from slmops.teacher.local import IDENTITY_FILE, pin_hf

OUT = Path("models/teacher")
METRICS = Path("reports/teacher.json")
LIVE_DIR = Path("reports/train/teacher")
CHECK_ROWS = 200  # augmented rows, not trained on, that the bootstrap teacher must copy the values of


def no_training_curves() -> None:
    """hf and openai teachers are not trained here; DVC still expects the plots folder: an empty curve."""
    with atomic_dir(LIVE_DIR) as live:
        (live / "plots/metrics/train").mkdir(parents=True)
        (live / "plots/metrics/train/loss.tsv").write_text("step\tloss\n")


@exits_2_on_input_error
def main() -> None:
    params = load_params()
    teacher = params.teacher
    with atomic_dir(OUT) as out:
        if teacher.backend == "openai":
            endpoint = Endpoint.from_params(teacher)
            identity = {**endpoint.identity(), **probe(endpoint, params.synthesize.requests)}
            write_json(out / IDENTITY_FILE, identity)
            no_training_curves()
        elif teacher.backend == "hf":
            identity = pin_hf(teacher.model, teacher.revision, out)
            no_training_curves()
        else:
            task = load_task(params.task.dir)
            labelled = read_labelled(params.data.labelled, task)
            rows = swap_stated_values(labelled, teacher.bootstrap.augment_copies, params.seed)
            check = [r for r in swap_stated_values(labelled, 1, params.seed + 1)[len(labelled) :] if stated_fields(r)]
            identity = bootstrap(task, rows, check[:CHECK_ROWS], teacher.bootstrap, params.seed, out, LIVE_DIR)
    write_json(METRICS, identity)


if __name__ == "__main__":
    main()

"""Stage endpoint: on every `dvc repro`, ask an endpoint teacher which model it serves -> data/endpoint.json.

    python -m stages.endpoint      (dvc repro endpoint; always_changed in dvc.yaml)

DVC cannot see a model swapped behind an endpoint name, so this stage asks on each run. The file changes
only when the answer does, and then synthesize (whose cache key holds the served model) reruns. For local
teachers (bootstrap, hf) it records the backend alone, without touching the network.
"""

from __future__ import annotations

from pathlib import Path

from slmops.core.errors import exits_2_on_input_error
from slmops.core.files import write_json
from slmops.core.params import load_params

OUT = Path("data/endpoint.json")


@exits_2_on_input_error
def main() -> None:
    params = load_params()
    teacher = params.teacher
    if teacher.backend != "openai":
        write_json(OUT, {"backend": teacher.backend})
        return
    # Imported here: the OpenAI client takes about a second to import, and local teachers need none.
    from slmops.teacher.endpoint import Endpoint, probe

    endpoint = Endpoint.from_params(teacher)
    write_json(OUT, {**endpoint.identity(), **probe(endpoint, params.synthesize.requests)})


if __name__ == "__main__":
    main()

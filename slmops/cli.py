"""The `slmops` command line.

    slmops validate [--params params.yaml]     check params against params.schema.json
    slmops eval MODEL_DIR [--limit N]           exact match of a model folder on the eval set
    slmops make-data [--out data]               regenerate the embedded task data (deterministic)
"""

from __future__ import annotations

import argparse
import json
import sys

from slmops.errors import InputError


def cmd_validate(args) -> int:
    from slmops.params import load_params

    load_params(args.params)
    print(f"{args.params}: valid")
    return 0


def cmd_eval(args) -> int:
    from slmops.evaluate import evaluate_model
    from slmops.generation import GenerationConfig
    from slmops.modeling import load_model_and_tokenizer
    from slmops.params import load_params
    from slmops.task import load_task, read_labelled

    params = load_params(args.params)
    task = load_task(params["task"]["dir"])
    rows = read_labelled(params["data"]["eval"], task)[: args.limit]
    model, tokenizer = load_model_and_tokenizer(args.model)
    config = GenerationConfig(**params["evaluate"]["generation"], seed=params["seed"])
    figures, _ = evaluate_model(model, tokenizer, task, rows, config, args.model)
    print(json.dumps(figures, indent=2))
    return 0


def cmd_make_data(args) -> int:
    from slmops import taskgen

    taskgen.main(["--out", args.out])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slmops", description="SLMOps pipeline tools")
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="check params.yaml against params.schema.json")
    validate.add_argument("--params", default="params.yaml")
    validate.set_defaults(run=cmd_validate)
    evaluate = sub.add_parser("eval", help="score a model folder on the held-out eval set")
    evaluate.add_argument("model")
    evaluate.add_argument("--params", default="params.yaml")
    evaluate.add_argument("--limit", type=int, default=None)
    evaluate.set_defaults(run=cmd_eval)
    make_data = sub.add_parser("make-data", help="regenerate the embedded support-triage data")
    make_data.add_argument("--out", default="data")
    make_data.set_defaults(run=cmd_make_data)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

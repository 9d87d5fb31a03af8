"""The `slmops` command line.

slmops validate [--params params.yaml]     validate params.yaml (slmops/core/config.py)
slmops eval MODEL_DIR [--limit N]           exact match of a model folder on the eval set
slmops make-data [--out data]               regenerate the embedded task data (deterministic)
slmops package verify DIR                   re-hash, run in onnxruntime-genai and in Foundry Local
slmops chat DIR [MESSAGE]                   ask a packaged (or exported) model; no MESSAGE: interactive
slmops report --base REV [--head REV]       Markdown diff of metrics and params, with gates (exit 1: a gate failed)
slmops report --base REV --experiments      rank the DVC experiments run on top of REV, same table and gates
slmops bench compare BASE_DIR HEAD_DIR      time two packages alternately in one run (report --speed reads it)
slmops noise REV REV [REV ...]              training noise between runs of the same params (report's tests use it)
slmops serve DIR [--host H] [--port P]      OpenAI-compatible HTTP server over a packaged model
slmops azureml submit [--config azureml.yaml]  run `dvc repro` as one Azure ML job, bring its results back
                                            (exit 3: the job failed or was cancelled)
slmops azureml cancel NAME                  cancel an Azure ML job (a cancelled workflow's last step)
"""

from __future__ import annotations

import argparse
import json
import sys

from slmops.core.errors import InputError


def cmd_validate(args) -> int:
    from slmops.core.params import load_params
    from slmops.core.task import load_task

    params = load_params(args.params)
    load_task(params.task.dir)
    print(f"{args.params}: valid (task spec: {params.task.dir}/task.yaml)")
    return 0


def cmd_eval(args) -> int:
    """A PyTorch folder (config.json) or an onnxruntime-genai folder (genai_config.json)."""
    from pathlib import Path

    from slmops.core.params import load_params
    from slmops.core.task import load_task, read_labelled
    from slmops.eval.evaluate import score_onnx, score_torch

    params = load_params(args.params)
    task = load_task(params.task.dir)
    rows = read_labelled(params.data.eval, task)[: args.limit]
    settings = params.evaluate.generation
    folder = Path(args.model)
    if not (folder / "genai_config.json").is_file() and not (folder / "config.json").is_file():
        raise InputError(f"{folder}: not a model folder (no config.json or genai_config.json)")
    if (folder / "genai_config.json").is_file():
        from slmops.onnx.runtime import OnnxChatModel

        figures, _ = score_onnx(OnnxChatModel(args.model), task, rows, settings, args.model)
    else:
        from slmops.models.hf import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(args.model)
        figures, _ = score_torch(model, tokenizer, task, rows, settings, params.seed, args.model)
    print(json.dumps(figures, indent=2))
    return 0


def _system_prompt(folder, given: str | None) -> str | None:
    """--system, else the instruction in the package's task.json, else none."""
    from pathlib import Path

    task_file = Path(folder) / "task.json"
    if given is not None or not task_file.is_file():
        return given
    return json.loads(task_file.read_text())["instruction"]


def cmd_package_verify(args) -> int:
    from slmops.foundry.verify import verify

    system = _system_prompt(args.dir, args.system)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": args.message}]
    result = verify(args.dir, messages, args.max_output_tokens)
    print(f"{args.dir}: {result.files} files match the manifest")
    print(f"onnxruntime-genai: {result.genai_answer!r}")
    print(f"Foundry Local ({result.foundry_finish_reason}): {result.foundry_answer!r}")
    return 0


def cmd_chat(args) -> int:
    from slmops.onnx.runtime import OnnxChatModel

    model = OnnxChatModel(args.dir)
    if args.max_new_tokens >= model.context_length:
        raise InputError(
            f"--max-new-tokens {args.max_new_tokens} cannot fit the model's context of {model.context_length} "
            f"tokens with a message (at most {model.context_length - 1}, less the message)"
        )
    system = _system_prompt(args.dir, args.system)
    opening = [{"role": "system", "content": system}] if system else []
    history = list(opening)

    def ask(question: str) -> None:
        if not args.history:
            history[:] = opening
        history.append({"role": "user", "content": question})
        # Keep the conversation inside the context: drop the oldest turns (never the system message).
        while len(model.prompt_tokens(history)) + args.max_new_tokens > model.context_length and len(history) > 2:
            del history[1 if system else 0]
        prompt = model.prompt_tokens(history)
        if len(prompt) >= model.context_length:
            history.pop()
            raise InputError(
                f"the message is {len(prompt)} tokens with the chat template; the model's context "
                f"is {model.context_length}"
            )
        pieces = []
        for piece in model.stream(history, args.max_new_tokens, prompt=prompt):
            print(piece, end="", flush=True)
            pieces.append(piece)
        print()
        history.append({"role": "assistant", "content": "".join(pieces).strip()})

    if args.message:
        ask(args.message)
        return 0
    print(f"{args.dir}: type a message, an empty line or Ctrl-D to quit", file=sys.stderr)
    while True:
        try:
            question = input("> ").strip()
        except EOFError:
            return 0
        if not question:
            return 0
        ask(question)


def cmd_make_data(args) -> int:
    from slmops import taskgen

    taskgen.main(["--out", args.out])
    return 0


def check_speed_figures(speed: dict, path) -> None:
    """InputError naming the first figure of a side-by-side timing that is not a number (or a list of numbers)."""

    def number(value) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    for side in ("base", "head"):
        if not isinstance(speed[side], dict):
            raise InputError(f"{path}: {side}: expected a mapping of figures")
        for key, value in speed[side].items():
            if key == "per_round":
                rounds = value if isinstance(value, list) else [value]
                for number_of_round, figures in enumerate(rounds, start=1):
                    if not isinstance(figures, dict) or not all(number(v) for v in figures.values()):
                        raise InputError(f"{path}: {side}.per_round[{number_of_round}]: expected figure: number")
                continue
            values = value if key == "latencies_ms" and isinstance(value, list) and value else [value]
            if key != "dir" and not all(number(v) for v in values):
                raise InputError(f"{path}: {side}.{key}: {value!r} is not a number (or a list of them)")


def cmd_report(args) -> int:
    from pathlib import Path

    from slmops.core.files import parse_json_object
    from slmops.report.compare import build, experiments_of, plot_pngs, read_revision, render, render_ranking

    speed = None
    if args.speed:
        path = Path(args.speed)
        if not path.is_file():
            raise InputError(f"{path}: side-by-side timing not found (write it with `slmops bench compare`)")
        speed = parse_json_object(path.read_text(), str(path))
        missing = [key for key in ("base", "head", "rounds", "requests", "order", "hardware") if key not in speed]
        missing += [f"{side}.latencies_ms" for side in ("base", "head") if "latencies_ms" not in speed.get(side, {})]
        if missing:
            raise InputError(f"{path}: not a `slmops bench compare` result (missing {', '.join(missing)})")
        check_speed_figures(speed, path)
    heads = list(args.head or [])
    if args.experiments:
        heads += experiments_of(args.base)
        if not heads:
            raise InputError(f"no DVC experiments on top of {args.base!r} (queue some: dvc exp run --queue -S ...)")
    heads = heads or ["workspace"]
    if speed is not None and len(heads) > 1:
        raise InputError("--speed times one base against one head; give one --head with it")
    comparisons = [build(args.base, head, speed if len(heads) == 1 else None) for head in heads]
    out = Path(args.out)
    if len(comparisons) == 1:
        markdown = render(comparisons[0])
        head_arg = None if heads[0] == "workspace" else heads[0]
        plot_pngs(read_revision(args.base)[2], read_revision(head_arg)[2], out.parent / args.plots_dir)
    else:
        markdown = render_ranking(comparisons)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown)
    print(markdown)
    failed = [f"{g.metric} ({c.head_rev})" if len(heads) > 1 else g.metric for c in comparisons for g in c.failed]
    if failed:
        print(f"slmops report: gate(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_noise(args) -> int:
    from pathlib import Path

    from slmops.core.params import parse_params
    from slmops.core.task import load_task
    from slmops.report.noise import instability, measure_runs, runs_table, write_noise

    if not Path(args.params).is_file():
        raise InputError(f"{args.params}: not found (give the project's params with --params)")
    params = parse_params(Path(args.params).read_text(), args.params, check_paths=False)  # only task.dir is read
    document = measure_runs(args.revs, load_task(params.task.dir))
    write_noise(document, args.out)
    print(runs_table(document))
    print(f"wrote {args.out}")
    if warning := instability(document):
        print(f"slmops noise: warning: {warning}", file=sys.stderr)
    return 0


def cmd_bench_compare(args) -> int:
    from pathlib import Path

    from slmops.core.files import write_json
    from slmops.core.params import load_params
    from slmops.core.task import load_task, read_labelled
    from slmops.eval.sidebyside import time_side_by_side

    params = load_params(args.params)
    task = load_task(params.task.dir)
    rows = read_labelled(params.data.eval, task)
    speed = params.evaluate.speed
    requests = args.requests or speed.repeats
    chats = [task.messages(rows[i % len(rows)]["message"]) for i in range(speed.warmup + requests)]
    result = time_side_by_side(
        args.base,
        args.head,
        chats,
        speed.warmup,
        params.evaluate.generation.max_new_tokens,
        args.rounds,
        params.quantize.execution_provider,
    )
    write_json(Path(args.out), result)
    for key in ("latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "decode_tokens_per_s", "peak_rss_mb"):
        base, head = result["base"][key], result["head"][key]
        print(f"{key}: base {base:.4g}, head {head:.4g}, head/base {head / base:.3f}" if base else f"{key}: n/a")
    print(f"wrote {args.out}")
    return 0


def cmd_serve(args) -> int:
    from slmops.foundry.serve import serve

    serve(args.dir, args.host, args.port, args.max_body_bytes, args.max_queue)
    return 0


def _azureml_client(config):
    """The workspace's MLClient (a function of its own so that tests can put a fake service behind it)."""
    from slmops import azureml

    return azureml.client(config)


def cmd_azureml_submit(args) -> int:
    from slmops import azureml

    config = azureml.load_config(args.config)
    azureml.check_workspace(config, args.config)
    git = azureml.git_identity(".")
    try:
        with azureml.workspace_answers(config):
            azureml.run(_azureml_client(config), config, git, ".")
    except azureml.JobDidNotComplete as err:
        print(f"error: {err}", file=sys.stderr)
        return azureml.EXIT_JOB_FAILED
    return 0


def cmd_azureml_cancel(args) -> int:
    from slmops import azureml

    config = azureml.load_config(args.config)
    azureml.check_workspace(config, args.config)
    with azureml.workspace_answers(config):
        azureml.cancel(_azureml_client(config), args.name)
    return 0


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (argparse turns the ValueError into a usage error, exit 2)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slmops", description="SLMOps pipeline tools")
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser(
        "validate", help="validate params.yaml (every key, type and range, the files it names) and the task spec"
    )
    validate.add_argument("--params", default="params.yaml")
    validate.set_defaults(run=cmd_validate)
    evaluate = sub.add_parser("eval", help="score a model folder on the held-out eval set")
    evaluate.add_argument("model")
    evaluate.add_argument("--params", default="params.yaml")
    evaluate.add_argument("--limit", type=positive_int, default=None)
    evaluate.set_defaults(run=cmd_eval)
    make_data = sub.add_parser("make-data", help="regenerate the embedded support-triage data")
    make_data.add_argument("--out", default="data")
    make_data.set_defaults(run=cmd_make_data)
    package = sub.add_parser("package", help="Foundry Local package tools").add_subparsers(dest="action", required=True)
    verify = package.add_parser(
        "verify", help="re-hash against manifest.json, run in onnxruntime-genai and Foundry Local"
    )
    verify.add_argument("dir")
    verify.add_argument("--message", default="Hello", help="the user message both runtimes answer")
    verify.add_argument("--system", default=None, help="system message (default: the package's task instruction)")
    verify.add_argument("--max-output-tokens", type=positive_int, default=64)
    verify.set_defaults(run=cmd_package_verify)
    chat = sub.add_parser("chat", help="ask a packaged model (one-shot with MESSAGE, else interactive)")
    chat.add_argument("dir")
    chat.add_argument("message", nargs="?")
    chat.add_argument("--system", default=None, help="system message (default: the package's task instruction)")
    chat.add_argument("--max-new-tokens", type=positive_int, default=128)
    chat.add_argument(
        "--history",
        action="store_true",
        help="keep the conversation (default: each message on its own, as a one-task model expects)",
    )
    chat.set_defaults(run=cmd_chat)
    report = sub.add_parser("report", help="Markdown report of metrics and params, base against head, with gates")
    report.add_argument("--base", required=True, help="git revision to compare against (a branch, tag or commit)")
    report.add_argument(
        "--head",
        action="append",
        help="git revision, DVC experiment name, or 'workspace' (default); repeat to rank several",
    )
    report.add_argument(
        "--experiments", action="store_true", help="rank every DVC experiment run on top of --base (dvc exp run)"
    )
    report.add_argument(
        "--speed", default=None, help="side-by-side timing of base and head packages (slmops bench compare --out)"
    )
    report.add_argument("--out", default="reports/pr/report.md", help="Markdown file to write")
    report.add_argument("--plots-dir", default="plots", help="folder for the PNG plots, beside --out")
    report.set_defaults(run=cmd_report)
    noise = sub.add_parser(
        "noise", help="how far runs of the same params (other seeds or machines) land apart; report's tests add it"
    )
    noise.add_argument("revs", nargs="+", help="git revisions or DVC experiments: the same params, seed aside")
    noise.add_argument("--out", default="reports/noise.json", help="JSON file to write (keep it in git)")
    noise.add_argument("--params", default="params.yaml", help="whose task.dir scores the answers")
    noise.set_defaults(run=cmd_noise)
    bench = sub.add_parser("bench", help="speed measurements").add_subparsers(dest="action", required=True)
    bench_compare = bench.add_parser(
        "compare", help="time two packaged models alternately in one run: same machine, comparable ratios"
    )
    bench_compare.add_argument("base", help="the base's package folder (models/foundry/<name> at the base revision)")
    bench_compare.add_argument("head", help="the head's package folder")
    bench_compare.add_argument("--rounds", type=positive_int, default=3, help="timings of each, alternating order")
    bench_compare.add_argument(
        "--requests", type=positive_int, default=None, help="timed requests per round (default: evaluate.speed.repeats)"
    )
    bench_compare.add_argument("--out", default="reports/pr/speed.json", help="JSON file to write")
    bench_compare.add_argument("--params", default="params.yaml")
    bench_compare.set_defaults(run=cmd_bench_compare)
    server = sub.add_parser("serve", help="OpenAI-compatible HTTP server over a packaged model")
    server.add_argument("dir")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    server.add_argument("--port", type=int, default=8000, help="port (0: any free port)")
    server.add_argument("--max-body-bytes", type=positive_int, default=1 << 20, help="largest request body accepted")
    server.add_argument(
        "--max-queue",
        type=positive_int,
        default=32,
        help="requests that may wait while one is answered; more get 503 with Retry-After (default 32)",
    )
    server.set_defaults(run=cmd_serve)
    aml = sub.add_parser("azureml", help="run the pipeline on Azure ML").add_subparsers(dest="action", required=True)
    aml_submit = aml.add_parser(
        "submit", help="submit `dvc repro` as one Azure ML job, stream it, copy its results into the checkout"
    )
    aml_submit.add_argument("--config", default="azureml.yaml", help="the Azure ML config (workspace, compute)")
    aml_submit.set_defaults(run=cmd_azureml_submit)
    aml_cancel = aml.add_parser("cancel", help="cancel an Azure ML job by name")
    aml_cancel.add_argument("name")
    aml_cancel.add_argument("--config", default="azureml.yaml")
    aml_cancel.set_defaults(run=cmd_azureml_cancel)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

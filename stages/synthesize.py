"""Stage synthesize: the teacher answers the unlabelled prompts -> data/synthetic/.

    python -m stages.synthesize      (dvc repro synthesize)

accepted.jsonl holds schema-valid answers, rejected.jsonl the others with the reason. A local teacher
(bootstrap, hf) can also store its top-k log-probs per answer token (synthesize.logprobs_top_k). An endpoint
teacher (openai) is asked concurrently through the response cache; usage and cost go to the metrics.
With synthesize.mode generate_and_label the teacher first writes new prompts from seed examples.
"""

from __future__ import annotations

from pathlib import Path

import torch

from slmops.core.errors import InputError, exits_2_on_input_error
from slmops.core.files import atomic_dir, read_jsonl, write_json, write_jsonl
from slmops.core.params import load_params
from slmops.core.task import load_task, read_labelled
from slmops.models.generate import GenerationConfig, generate_answers
from slmops.teacher.endpoint import (
    Endpoint,
    Requests,
    Settings,
    Usage,
    check_success_ratio,
    complete_all,
    served_endpoint,
)
from slmops.teacher.labelling import label_prompts, label_with_endpoint, write_new_prompts, write_synthetic
from slmops.teacher.local import load_teacher

OUT = Path("data/synthetic")
METRICS = Path("reports/synthesize.json")


def endpoint_teacher(params: dict) -> tuple[Endpoint, Requests]:
    if params["synthesize"]["logprobs_top_k"]:
        raise InputError("synthesize.logprobs_top_k: an endpoint's log-probs are over its own tokens, which a student "
                         "cannot match; set it to 0 with teacher.backend openai (and distill.kd.alpha: 1)")
    return served_endpoint(params["teacher"]), Requests(**params["synthesize"]["requests"])


def settings_for(params: dict, max_tokens: int, temperature: float, top_p: float = 1.0, response_format=None) -> Settings:
    return Settings(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=params["seed"],
                    response_format=response_format)


def with_written_prompts(params: dict, task, prompts: list[dict], answer_all) -> tuple[list[dict], list[dict], dict]:
    """(prompts to label, prompts the teacher wrote, stats); the same prompts when synthesize.mode is label."""
    if params["synthesize"]["mode"] == "label":
        return prompts, [], {}
    generate = params["synthesize"]["generate"]
    seeds = [r["message"] for r in read_labelled(params["data"]["labelled"], task)]
    settings = settings_for(params, generate["max_tokens"], generate["temperature"])
    written, stats = write_new_prompts(lambda chats: answer_all(chats, settings, "teacher writing prompts"), generate,
                                       seeds, seeds + [p["message"] for p in prompts], params["seed"])
    return prompts + written, written, {"generate": stats}


def from_endpoint(params: dict, task, prompts: list[dict]):
    endpoint, requests = endpoint_teacher(params)
    usage, options = Usage(), params["teacher"]["openai"]

    def answer_all(chats, settings, desc):
        replies, failures = complete_all(endpoint, settings, chats, requests, usage, desc)
        check_success_ratio(failures, requests.min_success_ratio, requests.cache)
        return [reply["content"] if reply else None for reply in replies]

    prompts, written, stats = with_written_prompts(params, task, prompts, answer_all)
    generation = params["synthesize"]["generation"]
    temperature = generation["temperature"] if generation["do_sample"] else 0.0
    settings = settings_for(params, generation["max_new_tokens"], temperature, generation["top_p"], options["response_format"])
    accepted, rejected, label_stats = label_with_endpoint(endpoint, task, prompts, settings, requests, usage)
    stats.update(label_stats, usage=usage.summary(options["prices"]))
    return accepted, rejected, written, stats, lambda out: write_synthetic(out, accepted, rejected, [], None, 0, endpoint.identity())


def from_local(params: dict, task, prompts: list[dict]):
    model, tokenizer, identity = load_teacher("models/teacher")
    torch.manual_seed(params["seed"])
    generation, top_k = params["synthesize"]["generation"], params["synthesize"]["logprobs_top_k"]

    def answer_all(chats, settings, desc):
        config = GenerationConfig(max_new_tokens=settings.max_tokens, batch_size=generation["batch_size"],
                                  do_sample=settings.temperature > 0, temperature=settings.temperature or 1.0,
                                  seed=params["seed"])
        return [answer.text for answer in generate_answers(model, tokenizer, chats, config, progress=desc)]

    prompts, written, stats = with_written_prompts(params, task, prompts, answer_all)
    config = GenerationConfig(**generation, seed=params["seed"])
    accepted, rejected, answers, label_stats = label_prompts(model, tokenizer, task, prompts, config, top_k)
    stats.update(label_stats)
    return accepted, rejected, written, stats, lambda out: write_synthetic(out, accepted, rejected, answers, tokenizer, top_k, identity)


@exits_2_on_input_error
def main() -> None:
    params = load_params()
    task = load_task(params["task"]["dir"])
    prompts = read_jsonl(params["data"]["prompts"], required=("message",))[: params["synthesize"]["limit"]]
    synthesize = from_endpoint if params["teacher"]["backend"] == "openai" else from_local
    accepted, rejected, written, stats, write = synthesize(params, task, prompts)
    if not accepted:
        raise InputError(f"the teacher produced no schema-valid answer for {len(rejected)} prompts; first reason: {rejected[0]['reason']}")
    with atomic_dir(OUT) as out:
        write(out)
        if written:
            write_jsonl(out / "written_prompts.jsonl", written)
    write_json(METRICS, stats)


if __name__ == "__main__":
    main()

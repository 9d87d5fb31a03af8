"""Evaluate: accuracy on hand-computed answers, speed summaries, retention, the report, the stage's inputs."""

import json

import pytest
from conftest import ROOT, default, run_stage

from slmops.eval.benchmark import Timing, measure, summarize
from slmops.eval.evaluate import metrics, plot_rows, retention, score_onnx, score_torch, size_on_disk
from slmops.models.generate import generate_answers
from slmops.models.hf import load_model_and_tokenizer
from slmops.onnx.runtime import OnnxChatModel, TimedAnswer
from slmops.report.run import render

GOLD = {"intent": "cancel_order", "order_id": "ORD-12", "product": "laptop", "urgency": "low", "sentiment": "neutral"}


class ScriptedModel:
    """Answers with fixed texts, in order, like OnnxChatModel.answer; a (text, False) pair was cut."""

    def __init__(self, texts):
        self.texts = iter(texts)

    def answer(self, messages, max_new_tokens, search_options=None):
        text = next(self.texts)
        text, finished = text if isinstance(text, tuple) else (text, True)
        return TimedAnswer(text, 10, 0.01, 0.001, finished)


def test_accuracy_figures_match_hand_computed_values(task):
    rows = [{"id": str(i), "message": f"message {i}", "label": GOLD} for i in range(6)]
    answers = [
        json.dumps(GOLD),  # exact
        json.dumps({**GOLD, "urgency": "high"}),  # valid, 4 of 5 fields
        "this is not JSON",  # invalid
        json.dumps({"intent": "cancel_order"}),  # JSON, but misses required keys
        f"<think>cancel</think>\nSure:\n```json\n{json.dumps(GOLD)}\n```",  # exact: the parser finds it
        (json.dumps(GOLD), False),  # cut at max_new_tokens: no answer, though the text parses
    ]
    figures, predictions = score_onnx(
        ScriptedModel(answers), task, rows, default("evaluate.generation", max_new_tokens=16), "scripted"
    )
    assert figures["exact_match"] == 2 / 6
    assert figures["json_valid"] == 4 / 6
    assert figures["schema_valid"] == 3 / 6
    assert figures["field_accuracy"] == {
        "intent": 4 / 6,
        "order_id": 3 / 6,
        "product": 3 / 6,
        "urgency": 2 / 6,
        "sentiment": 3 / 6,
    }
    assert figures["n"] == 6
    assert [p["answer"] for p in predictions] == answers[:5] + [json.dumps(GOLD)] and predictions[2]["id"] == "2"
    assert [p["finish_reason"] for p in predictions] == ["stop"] * 5 + ["length"]  # what re-scoring needs


def test_prediction_records_score_again_as_evaluate_scored_them(task):
    """slmops report re-scores both revisions' answers record by record: from the record alone it must reach
    evaluate's verdict, the cut answer included."""
    from slmops.report.paired import record_hits

    rows = [{"id": str(i), "message": f"m{i}", "label": GOLD} for i in range(2)]
    answers = [json.dumps(GOLD), (json.dumps(GOLD), False)]
    figures, predictions = score_onnx(
        ScriptedModel(answers), task, rows, default("evaluate.generation", max_new_tokens=16), "scripted"
    )
    assert figures["exact_match"] == 0.5
    assert record_hits(task, predictions)["exact_match"] == {"0": True, "1": False}


def test_speed_summary_is_hand_computable():
    timings = [Timing(0.010, 0.002, 5), Timing(0.020, 0.004, 9), Timing(0.030, 0.006, 1), Timing(0.040, 0.008, 11)]
    figures = summarize(timings)
    assert figures["latency_p50_ms"] == pytest.approx(25.0)
    assert figures["latency_p90_ms"] == pytest.approx(37.0)  # numpy's linear interpolation: 30 + 0.7 * 10
    assert figures["latency_p95_ms"] == pytest.approx(38.5)
    assert figures["ttft_p50_ms"] == pytest.approx(5.0)
    # decode: tokens after the first (4 + 8 + 0 + 10) over the time after the first token
    # (0.008 + 0.016 + 0.024 + 0.032)
    assert figures["decode_tokens_per_s"] == pytest.approx(22 / 0.080)
    assert figures["requests"] == 4


def variant(exact, latency, rss, size, weights, params=100, runtime=50.0):
    return {
        "exact_match": exact,
        "schema_valid": 1.0,
        "json_valid": 1.0,
        "size_mb": size,
        "weights_mb": weights,
        "parameters": params,
        "latency_p50_ms": latency,
        "latency_p95_ms": latency * 2,
        "ttft_p50_ms": 1.0,
        "decode_tokens_per_s": 100.0,
        "peak_rss_mb": rss,
        "model_rss_mb": rss - runtime,
    }


def test_retention_against_the_teacher():
    teacher = variant(0.90, 100.0, 400.0, 2.0, 1.8, params=500)
    finetuned = variant(0.86, 80.0, 380.0, 0.5, 0.4)
    shipped = variant(0.855, 5.0, 60.0, 0.15, 0.1, runtime=30.0)
    kept = retention(teacher, shipped, finetuned)
    assert kept["accuracy_kept"] == pytest.approx(0.95)
    assert kept["latency_saved"] == pytest.approx(0.95)
    assert kept["memory_saved"] == pytest.approx(0.85)  # the processes: 60 MB against 400 MB
    assert kept["model_memory_saved"] == pytest.approx(1 - 30 / 350)  # the models: 60 - 30 against 400 - 50
    assert kept["size_saved"] == pytest.approx(0.925)
    assert kept["size_saved_by_quantization"] == pytest.approx(0.75)
    assert kept["parameter_ratio"] == pytest.approx(0.2)
    full = metrics({"teacher": teacher, "finetuned": finetuned, "quantized": shipped})
    assert full["exact_match"] == 0.855 and full["latency_p50_ms"] == 5.0 and full["variants"]["teacher"] == teacher


def test_report_tables_and_claims(task):
    variants = {
        name: {**variant(*figures), "runtime": "r", "field_accuracy": {"intent": 0.5}, "n": 10, "latency_p90_ms": 1.0}
        for name, figures in {
            "teacher": (0.9, 100.0, 400.0, 2.0, 1.8),
            "student": (0.8, 90.0, 380.0, 0.5, 0.4),
            "finetuned": (0.86, 80.0, 380.0, 0.5, 0.4),
            "quantized": (0.88, 5.0, 60.0, 0.15, 0.1),
        }.items()
    }
    report = render(
        metrics(variants), {"precision": "int4", "engine": "builder", "execution_provider": "cpu"}, 10, "abc123"
    )
    assert "`abc123`" in report and "**int4**" in report
    assert "| quantized | r | 100 | 0.150 | 0.100 | 88.0% |" in report
    assert "| 92% accuracy kept (shipped model / teacher exact match) | 97.8% | yes |" in report
    assert "| 95% less memory (the process's peak resident memory against the teacher's) | 85.0% | no |" in report
    model_memory = "less model memory (peak resident memory less the runtime's own before the weights, against"
    assert f"| 95% {model_memory} the teacher) | 97.1% | yes |" in report  # 10 MB against 350 MB
    points, quantiles = plot_rows(variants, {"quantized": [3.0, 1.0, 2.0]})
    assert points[0] == {"variant": "teacher", "size_mb": 2.0, "exact_match": 0.9}
    assert [q["latency_ms"] for q in quantiles["quantized"]] == [1.0, 2.0, 3.0]


def test_size_on_disk_counts_weights_and_skips_pipeline_records(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x" * 1000)
    (tmp_path / "model.onnx.data").write_bytes(b"x" * 3000)
    (tmp_path / "tokenizer.json").write_bytes(b"x" * 500)
    (tmp_path / "quantize.json").write_bytes(b"x" * 70)
    assert size_on_disk(tmp_path) == {"size_mb": 4500 / 1e6, "weights_mb": 4000 / 1e6}


def test_onnx_fp32_answers_like_pytorch(task, tiny_hf_dir, tiny_onnx):
    rows = [json.loads(line) for line in (ROOT / "data/eval/eval.jsonl").read_text().splitlines()[:3]]
    model, tokenizer = load_model_and_tokenizer(tiny_hf_dir)
    settings = default("evaluate.generation", max_new_tokens=12)
    torch_figures, torch_predictions = score_torch(model, tokenizer, task, rows, settings, 0, "t")
    onnx_figures, onnx_predictions = score_onnx(OnnxChatModel(tiny_onnx["fp32"]), task, rows, settings, "o")
    assert [p["answer"] for p in onnx_predictions] == [p["answer"] for p in torch_predictions]
    assert torch_figures["parameters"] > 0
    chats = [task.messages(r["message"]) for r in rows]
    for limit in (2, 40):  # cut and, for some rows at least, finished: the same verdict from both runtimes
        torch_finished = [a.finished for a in generate_answers(model, tokenizer, chats, settings.greedy(limit))]
        onnx_finished = [OnnxChatModel(tiny_onnx["fp32"]).answer(chat, limit).finished for chat in chats]
        assert onnx_finished == torch_finished


def test_eval_command_scores_a_pytorch_and_an_onnx_folder(project, tiny_hf_dir, tiny_onnx, capsys):
    from slmops.cli import main as slmops

    figures = {}
    for name, folder in (("torch", tiny_hf_dir), ("onnx", tiny_onnx["fp32"])):
        assert slmops(["eval", str(folder), "--limit", "3"]) == 0
        figures[name] = json.loads(capsys.readouterr().out)
    assert figures["torch"]["n"] == figures["onnx"]["n"] == 3
    assert figures["torch"]["exact_match"] == figures["onnx"]["exact_match"]  # fp32 export: the same answers
    assert slmops(["eval", str(project / "missing")]) == 2


def test_speed_is_measured_in_a_fresh_process(task, tiny_onnx, tiny_hf_dir):
    chats = [task.messages("where is my order ORD-12?")] * 4
    onnx = measure("onnx", str(tiny_onnx["int4"]), chats, warmup=1, max_new_tokens=8)
    torch_figures = measure("torch", str(tiny_hf_dir), chats, warmup=1, max_new_tokens=8)
    bf16 = measure("torch-bf16", str(tiny_hf_dir), chats, warmup=1, max_new_tokens=8)
    for figures in (onnx, torch_figures, bf16):
        assert figures["requests"] == 3 and len(figures["latencies_ms"]) == 3
        assert 0 < figures["ttft_p50_ms"] <= figures["latency_p50_ms"]
        # the runtime loaded, no weights yet: below the peak, which adds the model and its work
        assert 0 < figures["runtime_rss_mb"] < figures["peak_rss_mb"]
        assert figures["model_rss_mb"] == figures["peak_rss_mb"] - figures["runtime_rss_mb"]
    assert onnx["peak_rss_mb"] < torch_figures["peak_rss_mb"]  # no torch in the ONNX child
    assert onnx["runtime_rss_mb"] < torch_figures["runtime_rss_mb"]
    # torch and its kernels are loaded before the weights: the tiny model's own memory is a fraction of the
    # runtime's (measured before it loaded torch, the "model" held torch's ~250 MB)
    assert torch_figures["model_rss_mb"] < torch_figures["runtime_rss_mb"] / 2


def test_speed_of_a_missing_model_names_it(task, tmp_path):
    with pytest.raises(RuntimeError, match="speed measurement of .*nowhere failed"):
        measure("onnx", str(tmp_path / "nowhere"), [task.messages("hi")], warmup=0, max_new_tokens=4)


def test_evaluate_stage_without_models_names_the_folder(project):
    result = run_stage(project, "evaluate")
    assert result.returncode == 2 and "models/teacher: model folder missing" in result.stderr
    assert not (project / "reports/metrics.json").exists()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("repeats: 30", "evaluate.speed.repeats"),
        ("warmup: 3", "evaluate.speed.warmup"),
    ],
)
def test_evaluate_stage_rejects_bad_speed_params(project, text, expected):
    params = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(params.replace(text, text.split(":")[0] + ": -1"))
    result = run_stage(project, "evaluate")
    assert result.returncode == 2 and expected in result.stderr


def test_an_endpoint_teacher_is_scored_through_the_same_parser(task, tmp_path):
    from fake_endpoint import FakeTeacher

    from slmops.eval.evaluate import EndpointVariant, Workload
    from slmops.teacher.endpoint import Endpoint

    rows = [json.loads(line) for line in (ROOT / "data/eval/eval.jsonl").read_text().splitlines()[:6]]
    server = FakeTeacher({r["message"]: r["label"] for r in rows})
    styles = ["think", "fenced", "trailing", "content_filter", "length", "reasoning_only"]
    for row, style in zip(rows, styles, strict=True):
        server.faults[row["message"]] = [style]
    try:
        endpoint = Endpoint(base_url=server.url, model="m", auth="none", served_model="fake-teacher-2026-01")
        requests = default("synthesize.requests", cache=str(tmp_path / "c.sqlite"))
        work = Workload(task, rows, default("evaluate.generation"), 0, [task.messages(rows[0]["message"])], 0)
        result = EndpointVariant("teacher", endpoint, requests, None).evaluate(work)
    finally:
        server.close()
    assert result.figures["exact_match"] == 3 / 6 and result.figures["json_valid"] == 3 / 6
    assert result.predictions[3]["answer"] == "" and result.predictions[0]["answer"].startswith("<think>")

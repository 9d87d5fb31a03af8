"""The family matrix: tiny models of real families (tests/families.py) through the pipeline by params alone.

Per family, in one module-scoped run (stages in-process, package in a subprocess: Foundry Local's manager is one
per process):
- teacher role: teacher.backend hf on the family's model; synthesize with its log-probs; distill a Llama
  student built on the family's tokenizer (logit KD); finetune; quantize with the builder; evaluate; package and
  verify in Foundry Local.
- student role: student.model the family's model, distilled on the same teacher's answers (same tokenizer, so
  logit KD); finetune (LoRA all-linear); quantize with the builder, evaluated, packaged and verified; then with
  Olive, packaged and verified.
Olive runs in the student role only: there it exports the family's own architecture with the family's tokenizer,
end tokens and template; the teacher role's student is a Llama, which Olive exports in tests/test_export.py.
The family's model is first taught the task briefly (a random-weight teacher would answer nothing valid).
evaluate's speed measurement and quantize's builder and Olive commands run in this process (conftest's
in_process_children): the matrix checks that each family's models export, run and answer; the child processes
the stages use are tested in tests/test_evaluate.py, tests/test_export.py and the end-to-end tests.
"""

import importlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, in_process_children, run_stage
from families import FAMILIES, SPECS, build
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

pytestmark = pytest.mark.slow  # a module-scoped run of every stage per family

CHAT = [
    {"role": "system", "content": "Answer in JSON."},
    {"role": "user", "content": "Where is order ORD-12?"},
    {"role": "assistant", "content": '{"intent": "track_order"}'},
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {family: build(family, tmp_path_factory.mktemp(family)) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_factory_writes_a_folder_of_the_family(folders, family):
    folder = folders[family]
    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ends = GenerationConfig.from_pretrained(folder).eos_token_id
    assert config.model_type == SPECS[family]["model_type"]
    assert config.vocab_size == len(tokenizer)
    assert ends == [tokenizer.convert_tokens_to_ids(t) for t in SPECS[family]["ends"]]
    rendered = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert "Answer in JSON." in rendered and "ORD-12" in rendered
    for token in SPECS[family]["special"]:
        assert tokenizer.tokenize(token) == [token], f"{family}: {token} is not one token"


def test_factory_templates_keep_each_familys_system_handling(folders):
    render = {
        f: AutoTokenizer.from_pretrained(folders[f]).apply_chat_template(
            CHAT[1:2], add_generation_prompt=True, tokenize=False
        )
        for f in FAMILIES
    }
    assert render["qwen2"].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert render["llama3"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert render["phi3"] == "<|user|>Where is order ORD-12?<|end|><|assistant|>"
    folded = AutoTokenizer.from_pretrained(folders["gemma"]).apply_chat_template(CHAT, tokenize=False)
    assert "<start_of_turn>user\nAnswer in JSON.\n\nWhere is order ORD-12?<end_of_turn>" in folded
    phi3 = AutoTokenizer.from_pretrained(folders["phi3"]).apply_chat_template(CHAT, tokenize=False)
    assert phi3.endswith("<|end|><|endoftext|>")


def test_factory_refuses_an_unknown_family(tmp_path):
    with pytest.raises(ValueError, match="unknown family 'gpt2'"):
        build("gpt2", tmp_path)


INTENT_SCHEMA = json.loads((ROOT / "data/task/answer.schema.json").read_text())
INTENT_SCHEMA["required"] = ["intent"]
INTENT_SCHEMA["properties"] = {"intent": INTENT_SCHEMA["properties"]["intent"]}


def intent_task(root: Path) -> None:
    """The seed task cut to its intent field, in `root`/data: a short answer that a tiny model learns in seconds
    (the families under test differ in architecture, tokenizer and template, not in the task)."""
    task = root / "data/task"
    task.mkdir(parents=True)
    (task / "answer.schema.json").write_text(json.dumps(INTENT_SCHEMA))
    spec = yaml.safe_load((ROOT / "data/task/task.yaml").read_text())
    spec["instruction"] = "Answer with one JSON object holding the customer's intent."
    spec["scoring"] = {"fields": ["intent"], "case_insensitive": ["intent"]}
    (task / "task.yaml").write_text(yaml.safe_dump(spec))
    small = root / "data/small"
    small.mkdir(parents=True)
    for src, dst, n in (
        ("seed/labelled.jsonl", "labelled.jsonl", 64),
        ("prompts/unlabelled.jsonl", "prompts.jsonl", 32),
        ("eval/eval.jsonl", "eval.jsonl", 8),
    ):
        rows = [json.loads(line) for line in (ROOT / "data" / src).read_text().splitlines()[:n]]
        for row in rows:
            if "label" in row:
                row["label"] = {"intent": row["label"]["intent"]}
        (small / dst).write_text("".join(json.dumps(r) + "\n" for r in rows))


def small_project(root: Path, edit) -> Path:
    """The intent task in `root`, with params.yaml small enough for seconds per stage."""
    intent_task(root)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"] = {k: f"data/small/{k}.jsonl" for k in ("labelled", "prompts", "eval")}
    params["student"]["config"].update(
        hidden_size=32, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64
    )
    params["distill"]["train"]["epochs"] = 3  # after 1, one family's student still had flat logits (0% agreement)
    params["finetune"]["train"]["epochs"] = 1
    params["finetune"]["lora"]["r"] = 4
    params["synthesize"]["generation"]["max_new_tokens"] = 24
    params["evaluate"]["generation"]["max_new_tokens"] = 24
    params["evaluate"]["speed"].update(warmup=1, repeats=2)
    params["quantize"]["parity"]["prompts"] = 4
    # Models trained for seconds have near-tied logits, so 4-bit rounding flips some greedy choices (86.6% of 67
    # positions for one family on one thread): here the export must run and mostly agree; the 0.9 default holds
    # for trained models (tests/test_export.py, the pipeline's own run).
    params["quantize"]["parity"]["min_greedy_agreement"] = 0.5
    params["package"]["name"] = "family-triage"
    params["package"]["verify"]["max_output_tokens"] = 24
    edit(params)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def taught(family: str, folder: Path, project: Path, steps: int = 80) -> Path:
    """The family's tiny model after a few Adam steps on four labelled rows of the project's task, so that it
    answers in schema-valid JSON (a random-weight teacher's answers would all be rejected). A plain loop, not
    the pipeline's trainer: a few full-batch steps, in seconds."""
    import torch

    from slmops.core.task import load_task, read_labelled
    from slmops.models.hf import load_model_and_tokenizer
    from slmops.train.data import Collator, sft_examples

    build(family, folder)
    task = load_task(project / "data/task")
    rows = read_labelled(project / "data/small/labelled.jsonl", task)[:4]
    model, tokenizer = load_model_and_tokenizer(folder)
    batch = Collator(tokenizer.pad_token_id)(sft_examples(task, tokenizer, rows))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder


class Run:
    """Runs stages in a project folder, recording per stage its outcome and seconds, and per export engine the
    records it left (reports/quantize.json, reports/package.json, models/onnx/genai_config.json)."""

    def __init__(self, root: Path):
        self.root, self.outcome, self.seconds, self.records = root, {}, {}, {}

    def stage(self, name: str, key: str) -> bool:
        started = time.perf_counter()
        previous = os.getcwd()
        os.chdir(self.root)
        try:
            if name == "package":  # Foundry Local's manager is one per process: verify in a child process
                result = run_stage(self.root, "package")
                errors = [line for line in result.stderr.splitlines() if line.startswith(("error", "Error"))]
                last = result.stderr.strip().splitlines()[-1:] if result.returncode else []
                self.outcome[key] = "ok" if result.returncode == 0 else "\n".join(errors + last)
            else:
                importlib.import_module(f"stages.{name}").main.__wrapped__()  # InputError with its message
                self.outcome[key] = "ok"
        except (Exception, SystemExit) as err:  # the cell records it; its test shows it
            self.outcome[key] = f"{type(err).__name__}: {err}"
        finally:
            os.chdir(previous)
            self.seconds[key] = round(time.perf_counter() - started, 1)
        return self.outcome[key] == "ok"

    def chain(self, names: list[str], engine: str = "") -> bool:
        """The stages in order, stopping at the first failure; after each, the records it leaves for `engine`."""
        for name in names:
            if not self.stage(name, f"{name} ({engine})" if name in ENGINE_STAGES else name):
                return False
            for path in RECORDS.get(name, ()):
                self.records.setdefault(engine, {})[path] = json.loads((self.root / path).read_text())
        return True

    def failed(self, keys) -> str:
        return "; ".join(
            f"{k}: {self.outcome.get(k, 'not run (an earlier stage failed)')}"
            for k in keys
            if self.outcome.get(k) != "ok"
        )


ENGINE_STAGES = ("quantize", "evaluate", "package")
RECORDS = {
    "quantize": ("reports/quantize.json", "models/onnx/genai_config.json"),
    "package": ("reports/package.json",),
}
FOUND = {}  # family: {role: {stage: seconds}}, printed at the end of the module


def with_engine(root: Path, engine: str) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["quantize"]["engine"] = engine
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module", params=FAMILIES)
def matrix(request, tmp_path_factory):
    """(family, teacher-role Run, student-role Run) for one family: every stage's outcome and seconds."""
    with pytest.MonkeyPatch.context() as patch:
        in_process_children(patch)
        return run_matrix(request.param, tmp_path_factory)


def run_matrix(family: str, tmp_path_factory) -> tuple[str, Run, Run]:
    work = tmp_path_factory.mktemp(f"matrix-{family}")
    model = work / f"{family}-model"

    def as_teacher(params):
        params["teacher"].update(backend="hf", model=str(model))

    teacher = Run(small_project(work / "teacher-role", as_teacher))
    started = time.perf_counter()
    taught(family, model, teacher.root)
    teacher.seconds["teach"] = round(time.perf_counter() - started, 1)
    if teacher.chain(["teacher", "synthesize", "distill", "finetune", "quantize", "evaluate"], "builder"):
        teacher.chain(["package"], "builder")

    def as_student(params):
        as_teacher(params)
        params["student"]["model"] = str(model)

    student = Run(small_project(work / "student-role", as_student))
    for name in ("models/teacher", "data/synthetic", "reports"):
        if (teacher.root / name).exists():
            shutil.copytree(teacher.root / name, student.root / name)
    if student.chain(["distill", "finetune", "quantize", "evaluate"], "builder"):
        student.chain(["package"], "builder")
        # The evaluate stage runs an Olive export as it runs the builder's (an onnxruntime-genai folder either way).
        with_engine(student.root, "olive")
        if student.chain(["quantize"], "olive"):
            student.chain(["package"], "olive")
    FOUND[family] = {"teacher": teacher.seconds, "student": student.seconds}
    print(f"\n{family}: seconds {json.dumps(FOUND[family])}")
    return family, teacher, student


def test_teacher_role_labels_and_distills(matrix):
    family, teacher, _ = matrix
    keys = ["teacher", "synthesize", "distill", "finetune"]
    assert not teacher.failed(keys), f"{family} as teacher: {teacher.failed(keys)}"
    assert json.loads((teacher.root / "reports/teacher.json").read_text())["backend"] == "hf"
    assert json.loads((teacher.root / "reports/synthesize.json").read_text())["accepted"] > 0
    assert json.loads((teacher.root / "data/synthetic/meta.json").read_text())["logprobs_top_k"] == 8
    assert json.loads((teacher.root / "reports/distill.json").read_text())["logit_kd"] is True
    student = teacher.root / "models/finetuned"
    assert AutoTokenizer.from_pretrained(student).chat_template == SPECS[family]["template"]
    # the student ends its answers where the teacher does (Gemma's <end_of_turn>, Llama 3's <|eot_id|>, ...)
    assert sorted(as_list(GenerationConfig.from_pretrained(student).eos_token_id)) == sorted(
        as_list(GenerationConfig.from_pretrained(teacher.root / "models/teacher").eos_token_id)
    )


def test_student_role_distills_and_finetunes(matrix):
    family, _, student = matrix
    assert not student.failed(["distill", "finetune"]), (
        f"{family} as student: {student.failed(['distill', 'finetune'])}"
    )
    assert json.loads((student.root / "reports/distill.json").read_text())["logit_kd"] is True
    assert AutoConfig.from_pretrained(student.root / "models/finetuned").model_type == SPECS[family]["model_type"]
    finetune = json.loads((student.root / "reports/finetune.json").read_text())
    assert 0 < finetune["trainable_parameters"] < finetune["total_parameters"]


def as_list(ids):
    return ids if isinstance(ids, list) else [ids]


ROLE_RUNS = {"teacher": 1, "student": 2}
EXPORTS = [("teacher", "builder"), ("student", "builder"), ("student", "olive")]  # Olive: the family's architecture


@pytest.mark.parametrize("role, engine", EXPORTS)
def test_export_quantizes_with_the_familys_end_tokens(matrix, role, engine):
    family, run = matrix[0], matrix[ROLE_RUNS[role]]
    keys = [f"quantize ({engine})"] + ([f"evaluate ({engine})"] if engine == "builder" else [])
    assert not run.failed(keys), f"{family} as {role}, {engine}: {run.failed(keys)}"
    records = run.records[engine]
    assert records["reports/quantize.json"]["engine"] == engine
    ends = GenerationConfig.from_pretrained(run.root / "models/finetuned").eos_token_id
    assert as_list(records["models/onnx/genai_config.json"]["model"]["eos_token_id"]) == as_list(ends)
    if engine == "builder":
        predictions = (run.root / "reports/predictions/quantized.jsonl").read_text().splitlines()
        assert len(predictions) == len((run.root / "data/small/eval.jsonl").read_text().splitlines())


@pytest.mark.parametrize("role, engine", EXPORTS)
def test_package_verifies_in_foundry_local(matrix, role, engine):
    family, run = matrix[0], matrix[ROLE_RUNS[role]]
    key = f"package ({engine})"
    assert not run.failed([key]), f"{family} as {role}, {engine}: {run.failed([key])}"
    assert run.records[engine]["reports/package.json"]["verified"] is True

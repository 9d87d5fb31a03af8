import pytest
import yaml
from conftest import ROOT, run_stage

from slmops.cli import main as slmops
from slmops.core.errors import InputError
from slmops.core.params import load_params


def write_params(project, edit):
    params = yaml.safe_load((project / "params.yaml").read_text())
    edit(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def test_default_params_are_valid(project):
    params = load_params()
    assert params.teacher.backend == "bootstrap" and params.distill.train.learning_rate == 0.005


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda p: p["finetune"]["lora"].update(rank=8),
            "unknown key finetune.lora.rank; allowed here: alpha, dropout, r, target_modules",
        ),
        (lambda p: p.update(typo_section={}), "unknown key typo_section"),
        (
            lambda p: p["finetune"]["lora"].update(r="eight"),
            "finetune.lora.r: 'eight': Input should be a valid integer (Rank of the update matrices.)",
        ),
        (lambda p: p["finetune"]["lora"].update(r=0), "finetune.lora.r: Input should be greater than or equal to 1"),
        (lambda p: p["finetune"]["lora"].update(r=True), "finetune.lora.r: true: Input should be a valid integer"),
        (lambda p: p["distill"]["kd"].update(alpha=1.5), "distill.kd.alpha: Input should be less than or equal to 1"),
        (
            lambda p: p["distill"]["kd"].update(loss="kl"),
            "distill.kd.loss: 'kl': Input should be 'forward_kl', 'reverse_kl' or 'jsd'",
        ),
        (
            lambda p: p["finetune"].update(method="dora"),
            "finetune.method: 'dora': Input should be 'lora', 'qlora' or 'none'",
        ),
        (lambda p: p["distill"]["train"].pop("epochs"), "distill.train.epochs: missing"),
        (
            lambda p: p["teacher"].update(backend="hf"),
            "teacher.model: must name the model (a folder, hub id or deployment) with backend hf (hf backend: a local",
        ),
        (
            lambda p: p["data"].update(eval="data/eval/missing.jsonl"),
            "data.eval: 'data/eval/missing.jsonl' does not exist",
        ),
        (
            lambda p: p["distill"]["train"].update(epochs=float("inf")),
            "distill.train.epochs: Input should be a finite number",
        ),
        (lambda p: p.update(seed=2**70), "seed: Input should be less than or equal to 4294967295"),
        (
            lambda p: p["quantize"].update(intra_op_num_threads=-1),
            "quantize.intra_op_num_threads: Input should be greater than or equal to 0",
        ),
        (
            lambda p: p["quantize"].update(intra_op_num_threads=10**30),
            "quantize.intra_op_num_threads: Input should be less than or equal to 1024",
        ),
        (lambda p: p["task"].update(dir="t" * 300), "task.dir: 'tttt"),
        (lambda p: p["data"].update(labelled="d" * 300), "is not a usable path: [Errno 36] File name too long"),
        (
            lambda p: p["quantize"].update(intra_op_num_threads="all"),
            "quantize.intra_op_num_threads: 'all': Input should be a valid integer",
        ),
        (
            lambda p: p["synthesize"].update(logprobs_top_k=-1),
            "synthesize.logprobs_top_k: Input should be greater than or equal to 0",
        ),
        (
            lambda p: p["student"]["config"].update(hidden_size=66),
            "student.config.num_attention_heads: 4 must divide hidden_size (66)",
        ),
        (
            lambda p: p["gates"].update(accuracy={"max_regression": 0.1}),
            "unknown key gates.accuracy; allowed here: accuracy_kept, decode_tokens_per_s",
        ),
        (
            lambda p: p["gates"].update(size_mb={"max_regression": 1, "max_regression_pct": 5}),
            "gates.size_mb: give exactly one of max_regression, max_regression_pct",
        ),
        (
            lambda p: p["finetune"]["lora"].update(target_modules="q_proj"),
            "finetune.lora.target_modules: 'q_proj' is neither all-linear nor a list of module names",
        ),
        (
            lambda p: p["finetune"]["lora"].update(target_modules=["all-linear"]),
            "finetune.lora.target_modules: all-linear stands alone, not in a list",
        ),
        (
            lambda p: p["finetune"]["lora"].update(target_modules=[]),
            "finetune.lora.target_modules: empty; list at least one module, or write all-linear",
        ),
        (
            lambda p: p["finetune"]["lora"].update(target_modules=["q_proj", " "]),
            "finetune.lora.target_modules: an empty module name; name a layer such as q_proj, or write all-linear",
        ),
    ],
)
def test_bad_params_name_the_key_and_what_is_allowed(project, edit, message):
    write_params(project, edit)
    with pytest.raises(InputError) as err:
        load_params()
    assert message in str(err.value)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("eval", "", "data.eval: '' does not exist"),
        ("eval", "data/eval", "data.eval: 'data/eval' is not a file"),
        ("dir", "data/task/task.yaml", "task.dir: 'data/task/task.yaml' is not a task folder (no task.yaml in it)"),
        ("dir", "data", "task.dir: 'data' is not a task folder"),
    ],
)
def test_paths_must_be_what_their_key_names(project, key, value, message):
    write_params(project, lambda p: p["task" if key == "dir" else "data"].update({key: value}))
    with pytest.raises(InputError) as err:
        load_params()
    assert message in str(err.value)


def test_file_problems_come_with_the_other_problems(project):
    def edit(p):
        p["finetune"]["lora"]["r"] = 0
        p["data"]["eval"] = "data/eval/missing.jsonl"

    write_params(project, edit)
    with pytest.raises(InputError) as err:
        load_params()
    assert "finetune.lora.r" in str(err.value) and "data.eval: 'data/eval/missing.jsonl' does not exist" in str(
        err.value
    )


def test_a_params_file_that_is_not_utf8_is_named(project):
    (project / "params.yaml").write_bytes((project / "params.yaml").read_bytes() + "# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"params.yaml: not UTF-8 text"):
        load_params()


def test_every_problem_is_reported_at_once(project):
    def edit(p):
        p["seed"] = "x"
        p["distill"]["kd"]["loss"] = "kl"

    write_params(project, edit)
    with pytest.raises(InputError) as err:
        load_params()
    assert "seed: 'x': Input should be a valid integer" in str(err.value)
    assert "distill.kd.loss" in str(err.value)


def test_malformed_yaml_is_an_input_error(project):
    (project / "params.yaml").write_text("seed: [1\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_params()


def test_params_are_read_as_dvc_reads_them(project):
    """YAML 1.2 (ruamel.yaml, DVC's loader): 5e-3 is a number; an unquoted date is refused with a hint to quote it."""
    text = (project / "params.yaml").read_text()
    assert "learning_rate: 0.005" in text
    (project / "params.yaml").write_text(text.replace("learning_rate: 0.005", "learning_rate: 5e-3"))
    assert load_params().distill.train.learning_rate == 0.005
    from dvc.repo import Repo

    assert (
        Repo.init(project, no_scm=True).params.show()[""]["data"]["params.yaml"]["data"]["distill"]["train"][
            "learning_rate"
        ]
        == 0.005
    )
    (project / "params.yaml").write_text(text.replace("api_version: null", "api_version: 2024-10-21"))
    with pytest.raises(InputError) as err:
        load_params()
    assert "teacher.openai.api_version: 2024-10-21 is read by YAML as a date; quote it: '2024-10-21'" in str(err.value)
    (project / "params.yaml").write_text(text.replace("api_version: null", "api_version: '2024-10-21'"))
    assert load_params().teacher.openai.api_version == "2024-10-21"


def test_validate_command_exit_codes(project, capsys):
    assert slmops(["validate"]) == 0
    write_params(project, lambda p: p["distill"]["kd"].update(temperature=0))
    assert slmops(["validate"]) == 2
    assert "distill.kd.temperature: Input should be greater than 0" in capsys.readouterr().err


def test_validate_names_a_malformed_task_file(project, capsys):
    spec = project / "data/task/task.yaml"
    spec.write_text(spec.read_text().replace("fields: [", "fields: [[", 1))
    assert slmops(["validate"]) == 2
    err = capsys.readouterr().err
    assert "data/task/task.yaml: not valid YAML" in err and 'in "data/task/task.yaml", line' in err


def test_a_yaml_error_in_params_names_the_file_and_line(project, capsys):
    (project / "params.yaml").write_text("seed: [42\n")
    assert slmops(["validate"]) == 2
    assert 'in "params.yaml", line 1, column 7' in capsys.readouterr().err


def test_validate_works_outside_the_repository(tmp_path, monkeypatch):
    """The schema ships inside the package: validation needs no file of the repository but params.yaml."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["task"]["dir"] = str(ROOT / "data/task")
    params["data"] = {k: str(ROOT / v) for k, v in params["data"].items()}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert slmops(["validate"]) == 0


def test_the_committed_schema_is_generated_from_the_params_types():
    from slmops.core.config import SCHEMA_PATH, json_schema

    assert SCHEMA_PATH.read_text() == json_schema(), "stale schema: run `python -m slmops.core.config`"


def test_every_params_key_has_a_description():
    import json

    from slmops.core.config import SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text())

    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{path}{key} has no description"
            ref = sub.get("$ref") or next((s["$ref"] for s in sub.get("anyOf", []) if "$ref" in s), None)
            walk(schema["$defs"][ref.split("/")[-1]] if ref else sub, f"{path}{key}.")

    walk(schema, "")


@pytest.mark.parametrize("stage", ["teacher", "synthesize", "distill", "finetune", "evaluate"])
def test_a_stage_with_bad_params_exits_2_and_writes_nothing(project, stage):
    write_params(project, lambda p: p["finetune"]["lora"].update(rank=8))
    before = sorted(p for p in project.rglob("*"))
    result = run_stage(project, stage)
    assert result.returncode == 2
    assert "unknown key finetune.lora.rank" in result.stderr
    assert sorted(p for p in project.rglob("*")) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "models/onnx", "--limit", "0"],
        ["chat", "pkg", "hi", "--max-new-tokens", "-5"],
        ["package", "verify", "pkg", "--max-output-tokens", "0"],
    ],
)
def test_command_line_counts_must_be_positive(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        slmops(argv)
    assert exit_.value.code == 2 and "invalid positive_int value" in capsys.readouterr().err


# --- output budgets against the context of the model that spends them ---------------------------------------


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda p: p["package"]["verify"].update(max_output_tokens=2048),
            "package.verify.max_output_tokens: 2048 tokens cannot fit the student's context of 256 tokens "
            "(student.config.max_position_embeddings) with a prompt (at most 255, less the prompt)",
        ),
        (
            lambda p: p["evaluate"]["generation"].update(max_new_tokens=256),
            "evaluate.generation.max_new_tokens: 256 tokens cannot fit the teacher's context of 256 tokens "
            "(teacher.bootstrap.config.max_position_embeddings)",
        ),
        (
            lambda p: p["student"]["config"].update(max_position_embeddings=64),
            "evaluate.generation.max_new_tokens: 64 tokens cannot fit the student's context of 64 tokens",
        ),
        (
            lambda p: p["synthesize"]["generation"].update(max_new_tokens=300),
            "synthesize.generation.max_new_tokens: 300 tokens cannot fit the teacher's context of 256 tokens",
        ),
        (
            lambda p: p["synthesize"].update(mode="generate_and_label"),  # generate.max_tokens: 1024
            "synthesize.generate.max_tokens: 1024 tokens cannot fit the teacher's context of 256 tokens",
        ),
    ],
)
def test_an_output_budget_that_cannot_fit_the_context_is_refused(project, capsys, edit, message):
    write_params(project, edit)
    assert slmops(["validate"]) == 2
    assert message in capsys.readouterr().err


def test_a_local_models_context_comes_from_its_config(project, tiny_hf_dir, capsys):
    write_params(project, lambda p: p["student"].update(model=str(tiny_hf_dir)))
    assert slmops(["validate"]) == 0
    write_params(project, lambda p: p["package"]["verify"].update(max_output_tokens=400))
    assert slmops(["validate"]) == 2
    assert (
        f"package.verify.max_output_tokens: 400 tokens cannot fit the student's context of 256 tokens "
        f"({tiny_hf_dir}/config.json)" in capsys.readouterr().err
    )


def test_an_endpoint_teachers_budget_is_its_own_to_check(project):
    def endpoint(p):
        p["teacher"].update(backend="openai", model="deployment")
        p["teacher"]["openai"].update(base_url="http://127.0.0.1:9/v1")
        p["synthesize"]["generation"].update(max_new_tokens=4096)

    write_params(project, endpoint)
    assert load_params().synthesize.generation.max_new_tokens == 4096


def test_the_package_stage_refuses_a_budget_over_the_context_before_any_work(project):
    write_params(project, lambda p: p["package"]["verify"].update(max_output_tokens=300))
    before = sorted(p for p in project.rglob("*"))
    result = run_stage(project, "package")
    assert result.returncode == 2
    assert "package.verify.max_output_tokens: 300 tokens cannot fit the student's context of 256" in result.stderr
    assert sorted(p for p in project.rglob("*")) == before

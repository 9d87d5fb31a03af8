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
    assert params["teacher"]["backend"] == "bootstrap"


@pytest.mark.parametrize("edit, message", [
    (lambda p: p["finetune"]["lora"].update(rank=8), "unknown key finetune.lora.rank; allowed here: alpha, dropout, r, target_modules"),
    (lambda p: p.update(typo_section={}), "unknown key typo_section"),
    (lambda p: p["finetune"]["lora"].update(r="eight"), "finetune.lora.r: 'eight' is not of type 'integer' (Rank of the update matrices.)"),
    (lambda p: p["finetune"]["lora"].update(r=0), "finetune.lora.r: 0 is less than the minimum of 1"),
    (lambda p: p["distill"]["kd"].update(alpha=1.5), "distill.kd.alpha: 1.5 is greater than the maximum of 1"),
    (lambda p: p["distill"]["kd"].update(loss="kl"), "distill.kd.loss: 'kl' is not one of ['forward_kl', 'reverse_kl', 'jsd']"),
    (lambda p: p["finetune"].update(method="dora"), "finetune.method: 'dora' is not one of ['lora', 'qlora', 'none']"),
    (lambda p: p["distill"]["train"].pop("epochs"), "distill.train: 'epochs' is a required property"),
    (lambda p: p["teacher"].update(backend="hf"), "teacher.model: None is not of type 'string'"),
    (lambda p: p["data"].update(eval="data/eval/missing.jsonl"), "data.eval: 'data/eval/missing.jsonl' does not exist"),
    (lambda p: p["synthesize"].update(logprobs_top_k=-1), "synthesize.logprobs_top_k: -1 is less than the minimum of 0"),
])
def test_bad_params_name_the_key_and_what_is_allowed(project, edit, message):
    write_params(project, edit)
    with pytest.raises(InputError) as err:
        load_params()
    assert message in str(err.value)


def test_every_problem_is_reported_at_once(project):
    def edit(p):
        p["seed"] = "x"
        p["distill"]["kd"]["loss"] = "kl"
    write_params(project, edit)
    with pytest.raises(InputError) as err:
        load_params()
    assert "seed: 'x' is not of type 'integer'" in str(err.value)
    assert "distill.kd.loss" in str(err.value)


def test_malformed_yaml_is_an_input_error(project):
    (project / "params.yaml").write_text("seed: [1\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_params()


def test_validate_command_exit_codes(project, capsys):
    assert slmops(["validate"]) == 0
    write_params(project, lambda p: p["distill"]["kd"].update(temperature=0))
    assert slmops(["validate"]) == 2
    assert "distill.kd.temperature: 0 is less than or equal to the minimum of 0" in capsys.readouterr().err


def test_every_schema_key_has_a_description():
    import json

    def walk(schema, path):
        for key, sub in schema.get("properties", {}).items():
            assert sub.get("description"), f"{path}{key} has no description"
            walk(sub, f"{path}{key}.")
    walk(json.loads((ROOT / "params.schema.json").read_text()), "")


@pytest.mark.parametrize("stage", ["teacher", "synthesize", "distill", "finetune", "evaluate"])
def test_a_stage_with_bad_params_exits_2_and_writes_nothing(project, stage):
    write_params(project, lambda p: p["finetune"]["lora"].update(rank=8))
    before = sorted(p for p in project.rglob("*"))
    result = run_stage(project, stage)
    assert result.returncode == 2
    assert "unknown key finetune.lora.rank" in result.stderr
    assert sorted(p for p in project.rglob("*")) == before

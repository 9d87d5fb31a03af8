"""Quantize: builder and Olive exports, int8, the parity check (and a broken export it must catch), the stage."""

import json
import os
import shutil

import onnx
import pytest
import torch
import yaml
from conftest import TINY_LLAMA, default, run_stage
from transformers import LlamaConfig, LlamaForCausalLM

from slmops.onnx.export import (
    builder_options,
    olive_workflow,
    run_builder,
    run_olive,
    set_session_options,
    write_workflow,
)
from slmops.onnx.parity import Parity, check_parity
from slmops.onnx.runtime import OnnxChatModel


def prompt_and_answer(tokenizer):
    prompt = tokenizer(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "my order ORD-12 is late"}], add_generation_prompt=True, tokenize=False
        ),
        add_special_tokens=False,
    )["input_ids"]
    return [prompt], [tokenizer('{"intent": "late"}', add_special_tokens=False)["input_ids"]]


def test_fp32_export_matches_pytorch_logits(tiny_hf_dir, tiny_onnx, tokenizer):
    model = LlamaForCausalLM.from_pretrained(tiny_hf_dir)
    parity = check_parity(model, OnnxChatModel(tiny_onnx["fp32"]), *prompt_and_answer(tokenizer))
    assert parity.max_abs_logit_diff < 1e-4
    assert parity.greedy_agreement == 1.0
    assert parity.failure("fp32", 1e-3, 0.9) is None


def test_int4_export_is_smaller_and_keeps_greedy_tokens(tiny_hf_dir, tiny_onnx, tokenizer):
    weights = {p: sum(f.stat().st_size for f in tiny_onnx[p].glob("model.onnx*")) for p in tiny_onnx}
    assert weights["int4"] < weights["fp32"] / 2  # block scales weigh more at width 32 than in real models
    model = LlamaForCausalLM.from_pretrained(tiny_hf_dir)
    parity = check_parity(model, OnnxChatModel(tiny_onnx["int4"]), *prompt_and_answer(tokenizer))
    assert parity.positions == len(prompt_and_answer(tokenizer)[1][0])
    assert parity.max_abs_logit_diff > 0  # quantization changes logits
    ops = {node.op_type for node in onnx.load(str(tiny_onnx["int4"] / "model.onnx")).graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops  # embeddings quantized too (quantize.embeddings)


def thread_count() -> int:
    """This process's threads (Linux, where the project measures memory through /proc too)."""
    return len(os.listdir("/proc/self/task"))


def test_session_options_set_the_threads_onnxruntime_genai_starts(tiny_onnx, tmp_path):
    """The key set_session_options writes is the one onnxruntime-genai reads: a session of 3 intra-op threads
    starts 2 more pool threads than one of 1 (the calling thread is the pool's first)."""
    import onnxruntime_genai as og

    folders = {}
    for threads in (1, 3):
        folders[threads] = shutil.copytree(tiny_onnx["int4"], tmp_path / f"threads-{threads}")
        set_session_options(folders[threads] / "genai_config.json", default("quantize", intra_op_num_threads=threads))
    warm = og.Model(str(folders[1]))  # the first model also starts onnxruntime's process-wide threads
    before = thread_count()
    one = og.Model(str(folders[1]))
    after_one = thread_count()
    three = og.Model(str(folders[3]))
    after_three = thread_count()
    assert (after_three - after_one) - (after_one - before) == 2
    del warm, one, three


@pytest.mark.slow  # an export in a child process
def test_int8_quantizes_matmuls_to_8_bits(tiny_hf_dir, tmp_path, tokenizer):
    run_builder(tiny_hf_dir, tmp_path / "int8", default("quantize", precision="int8", block_size=16), tmp_path)
    nodes = [n for n in onnx.load(str(tmp_path / "int8/model.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert nodes and all({a.name: a.i for a in n.attribute}["bits"] == 8 for n in nodes)
    assert all({a.name: a.i for a in n.attribute}["block_size"] == 16 for n in nodes)
    answer = OnnxChatModel(tmp_path / "int8").answer([{"role": "user", "content": "hello"}], 8)
    assert answer.tokens <= 8


@pytest.mark.slow  # an export in a child process
def test_parity_check_catches_the_builders_lm_head_misdetection(tokenizer, tmp_path):
    """An MLP as wide as the vocabulary: the builder takes it for the LM head and exports wrong logits."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        **{**TINY_LLAMA.model_dump(), "intermediate_size": len(tokenizer)},
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    run_builder(tmp_path / "hf", tmp_path / "onnx", default("quantize", precision="fp32"), tmp_path)
    parity = check_parity(model, OnnxChatModel(tmp_path / "onnx"), *prompt_and_answer(tokenizer))
    failure = parity.failure("fp32", 1e-3, 0.9)
    assert failure is not None
    assert "fp32 export differs from PyTorch" in failure and f"{parity.max_abs_logit_diff:.3g}" in failure


def test_parity_failure_messages_name_the_figures():
    parity = Parity(prompts=4, positions=100, max_abs_logit_diff=0.5, greedy_agreement=0.8)
    assert "max |logit difference| 0.5" in parity.failure("fp32", 1e-3, 0.9)
    assert parity.failure("fp32", 1.0, 0.99) is None  # fp32 is judged on logits only
    message = parity.failure("int4", 1e-3, 0.9)
    assert "int4 export disagrees" in message and "80.0%" in message and "100 positions of 4 prompts" in message
    assert parity.failure("int4", 1e-3, 0.8) is None


def test_builder_options_follow_params():
    config = default("quantize", precision="int4", block_size=64, symmetric=False, accuracy_level=2, embeddings=False)
    assert builder_options(config, tied_embeddings=True) == {
        "int4_block_size": "64",
        "int4_is_symmetric": "false",
        "int4_accuracy_level": "2",
    }
    shared = builder_options(default("quantize", precision="int4"), tied_embeddings=True)
    assert shared["int4_op_types_to_quantize"] == "MatMul/Gather" and shared["shared_embeddings"] == "true"
    assert builder_options(default("quantize", precision="fp16"), tied_embeddings=True) == {}


def test_olive_workflow_int8_keeps_the_logits_output(tiny_hf_dir):
    workflow = olive_workflow(str(tiny_hf_dir), "/out", "/cache", default("quantize", precision="int8", block_size=32))
    assert workflow["passes"]["build"] == {"type": "ModelBuilder", "precision": "fp32"}
    rtn = workflow["passes"]["int8"]
    assert rtn["type"] == "OnnxBlockWiseRtnQuantization" and rtn["bits"] == 8
    assert rtn["nodes_to_exclude"] == ["/lm_head/MatMul"]
    assert workflow["output_dir"] == "/out" and workflow["input_model"]["model_path"] == str(tiny_hf_dir)


@pytest.mark.slow  # an export in a child process
def test_olive_engine_exports_a_model_that_passes_the_parity_check(tiny_hf_dir, tokenizer, tmp_path):
    out = tmp_path / "olive-out"
    config = default("quantize", precision="int4")
    workflow = olive_workflow(str(tiny_hf_dir), str(out), str(tmp_path / "cache"), config)
    write_workflow(tmp_path / "olive.json", workflow)
    run_olive(tmp_path / "olive.json", out)
    answer = OnnxChatModel(out).answer([{"role": "user", "content": "hello"}], 8)
    assert answer.tokens <= 8 and answer.seconds > 0
    parity = check_parity(
        LlamaForCausalLM.from_pretrained(tiny_hf_dir), OnnxChatModel(out), *prompt_and_answer(tokenizer)
    )
    assert parity.positions == len(prompt_and_answer(tokenizer)[1][0])
    assert 0 < parity.max_abs_logit_diff < 0.2  # int4 rounding, not a different network (a broken graph is off by >1)
    assert parity.failure("int4", config.parity.max_abs_logit_diff, config.parity.min_greedy_agreement) is None


@pytest.mark.slow  # an export in a child process
def test_olive_run_that_writes_no_model_is_an_error(tmp_path):
    workflow = {
        "input_model": {"type": "HfModel", "model_path": str(tmp_path / "nothing-here")},
        "passes": {},
        "output_dir": str(tmp_path / "out"),
        "cache_dir": str(tmp_path / "cache"),
    }
    write_workflow(tmp_path / "bad.json", workflow)
    with pytest.raises(RuntimeError, match="olive run"):
        run_olive(tmp_path / "bad.json", tmp_path / "out")


# --- the stage ----------------------------------------------------------------------------------------


def set_params(project, **changes):
    params = yaml.safe_load((project / "params.yaml").read_text())
    for dotted, value in changes.items():
        *path, key = dotted.split("__")
        target = params
        for part in path:
            target = target[part]
        target[key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture()
def quantize_project(project, tiny_hf_dir):
    import shutil

    shutil.copytree(tiny_hf_dir, project / "models/finetuned")
    set_params(project, quantize__parity__prompts=2, evaluate__generation__max_new_tokens=8)
    return project


@pytest.mark.slow  # an export in a child process
def test_quantize_stage_writes_a_checked_export(quantize_project):
    set_params(quantize_project, quantize__precision="fp32", quantize__intra_op_num_threads=3)
    result = run_stage(quantize_project, "quantize")
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((quantize_project / "reports/quantize.json").read_text())
    assert record["precision"] == "fp32" and record["parity"]["max_abs_logit_diff"] < 1e-3
    assert record["parity"]["prompts"] == 2
    for name in ("model.onnx", "genai_config.json", "tokenizer.json", "chat_template.jinja", "quantize.json"):
        assert (quantize_project / "models/onnx" / name).is_file(), name
    genai = json.loads((quantize_project / "models/onnx/genai_config.json").read_text())
    assert genai["model"]["decoder"]["session_options"] == {
        "log_id": "onnxruntime-genai",  # the builder's own options are kept
        "provider_options": [],
        "intra_op_num_threads": 3,
    }


@pytest.mark.slow  # an export in a child process
def test_quantize_stage_fails_on_parity_and_writes_nothing(quantize_project):
    set_params(quantize_project, quantize__precision="fp32", quantize__parity__max_abs_logit_diff=1e-12)
    result = run_stage(quantize_project, "quantize")
    assert result.returncode != 0
    assert "parity check failed: fp32 export differs from PyTorch: max |logit difference|" in result.stderr
    assert not (quantize_project / "models/onnx").exists()
    assert not (quantize_project / "reports/quantize.json").exists()


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("quantize__precision", "int3", "quantize.precision"),
        ("quantize__engine", "tensorrt", "quantize.engine"),
        ("quantize__block_size", 48, "quantize.block_size"),
        ("quantize__parity__min_greedy_agreement", 1.5, "quantize.parity.min_greedy_agreement"),
    ],
)
def test_quantize_stage_rejects_bad_params(quantize_project, key, value, expected):
    set_params(quantize_project, **{key: value})
    result = run_stage(quantize_project, "quantize")
    assert result.returncode == 2 and expected in result.stderr
    assert not (quantize_project / "models/onnx").exists()


def test_quantize_stage_without_a_finetuned_model(project):
    result = run_stage(project, "quantize")
    assert result.returncode == 2 and "models/finetuned" in result.stderr and "finetune stage" in result.stderr


def test_quantize_stage_refuses_a_head_size_the_cpu_attention_kernel_cannot_run(project, tokenizer):
    """onnxruntime's CPU GroupQueryAttention needs a head size that is a multiple of 16 (else the export fails at
    its first answer); the stage says so before exporting, exit 2."""
    torch.manual_seed(0)
    shape = TINY_LLAMA.model_copy(update={"hidden_size": 48, "num_attention_heads": 2, "num_key_value_heads": 2})
    from slmops.models.hf import build_llama

    build_llama(shape, tokenizer).save_pretrained(project / "models/finetuned")
    tokenizer.save_pretrained(project / "models/finetuned")
    result = run_stage(project, "quantize")
    assert result.returncode == 2, result.stderr[-2000:]
    assert (
        "models/finetuned/config.json: head size 24 (head_dim, or hidden_size / num_attention_heads)" in result.stderr
    )
    assert "is not a multiple of 16" in result.stderr
    assert not (project / "models/onnx").exists()

"""The scale profile's own logic (benchmarks/scale.py): bandwidth-bound arithmetic, bytes a decode step reads,
goals, the table, argument errors. The heavy run itself is `make bench-scale`, not part of the suite."""

import subprocess
import sys

import pytest
from conftest import ROOT
from onnx import TensorProto, helper

from benchmarks import peer
from benchmarks.scale import (
    GOALS,
    bound_tokens_per_s,
    decode_bytes_per_token,
    goal_failures,
    kv_bytes_per_position,
    onnx_weight_bytes_per_token,
    parse_args,
    prompt_chat,
    render_report,
    render_table,
    teacher_student_memory,
)

QWEN_05B = {"hidden_size": 896, "num_attention_heads": 14, "num_key_value_heads": 2, "num_hidden_layers": 24}


def test_bound_is_bandwidth_over_bytes_per_token():
    assert bound_tokens_per_s(9e9, 300e6) == pytest.approx(30.0)
    with pytest.raises(ValueError, match="bytes per token must be positive, got 0"):
        bound_tokens_per_s(9e9, 0)


def test_kv_cache_bytes_follow_the_shape():
    # 2 (key, value) x 24 layers x 2 kv heads x head size 64 x 4 bytes
    assert kv_bytes_per_position(QWEN_05B, 4) == 2 * 24 * 2 * 64 * 4
    assert kv_bytes_per_position(QWEN_05B | {"head_dim": 128}, 2) == 2 * 24 * 2 * 128 * 2
    # weights, plus the cache read at the mean decoded position (64-token prompt, 64 new: position 96)
    assert decode_bytes_per_token(1000, QWEN_05B, 4, 64, 64) == 1000 + 2 * 24 * 2 * 64 * 4 * 96


def _model(nodes, initializers):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])], [], initializer=initializers
    )
    return helper.make_model(graph)


def _raw(name, dtype, dims):
    """An initializer with its shape and type only: the count reads no data (external data is not loaded)."""
    return TensorProto(name=name, data_type=dtype, dims=dims)


def test_decode_reads_every_weight_but_lookup_tables():
    embedding = _raw("embed", TensorProto.FLOAT, [1000, 8])  # 32,000 bytes, looked up by row only
    packed = _raw("w_q", TensorProto.UINT8, [8, 1, 16])  # 128 bytes
    scales = _raw("w_scales", TensorProto.FLOAT, [8])  # 32 bytes
    cos = _raw("cos_cache", TensorProto.FLOAT, [4096, 32])  # rotary table: one row a step
    position = _raw("pos_q", TensorProto.UINT8, [64, 16])  # a quantized table and its scales, looked up by row
    position_scales = _raw("pos_scales", TensorProto.FLOAT, [64, 1])
    nodes = [
        helper.make_node("Gather", ["embed", "ids"], ["h"]),
        helper.make_node("GatherBlockQuantized", ["pos_q", "ids", "pos_scales"], ["p"], domain="com.microsoft"),
        helper.make_node("MatMulNBits", ["h", "w_q", "w_scales"], ["y"], domain="com.microsoft"),
        helper.make_node(
            "GroupQueryAttention", ["y", *[""] * 6, "cos_cache", "cos_cache"], ["a"], domain="com.microsoft"
        ),
    ]
    model = _model(nodes, [embedding, packed, scales, cos, position, position_scales])
    assert onnx_weight_bytes_per_token(model) == 128 + 32


def test_a_table_shared_with_the_lm_head_is_read_whole():
    table = _raw("embed_q", TensorProto.UINT8, [1000, 4])  # 4,000 bytes
    int4 = _raw("nibbles", TensorProto.INT4, [10])  # 5 bytes
    nodes = [
        helper.make_node("GatherBlockQuantized", ["embed_q", "ids"], ["h"], domain="com.microsoft"),
        helper.make_node("MatMulNBits", ["h", "embed_q"], ["logits"], domain="com.microsoft"),
        helper.make_node("Add", ["logits", "nibbles"], ["out"]),
    ]
    assert onnx_weight_bytes_per_token(_model(nodes, [table, int4])) == 4000 + 5


def test_a_table_transposed_for_a_lookup_counts_nothing():
    # the builder's fp32 graph of a tied model: the embedding is a Transpose of the LM head's weight, which
    # onnxruntime folds at load; the int8 quantizer then gives the LM head its own 8-bit copy
    weight = _raw("lm_head.weight", TensorProto.FLOAT, [8, 1000])  # 32,000 bytes
    head = _raw("lm_head_q8", TensorProto.UINT8, [1000, 8])  # 8,000 bytes
    nodes = [
        helper.make_node("Transpose", ["lm_head.weight"], ["table"]),
        helper.make_node("Gather", ["table", "ids"], ["h"]),
        helper.make_node("MatMulNBits", ["h", "lm_head_q8"], ["logits"], domain="com.microsoft"),
    ]
    assert onnx_weight_bytes_per_token(_model(nodes, [weight, head])) == 8000


def row(name, **figures):
    return {"name": name, "size_vs_fp32": 0.14, "bound_share": 0.9, "decode_tokens_per_s": 30.0} | figures


def test_goals_met_and_each_miss_named():
    assert goal_failures([row("int4-emb-b128"), row("llama.cpp-Q4_K_M", decode_tokens_per_s=29.0)]) == []
    failures = goal_failures(
        [
            row("int4-emb-b128", size_vs_fp32=0.157, bound_share=0.82, decode_tokens_per_s=20.0),
            row("llama.cpp-Q4_K_M", decode_tokens_per_s=25.0),
        ]
    )
    assert failures == [
        f"int4-emb-b128 is 0.157 of fp32 (goal: at most {GOALS['max_size_vs_fp32']})",
        "int4-emb-b128 decodes at 82% of the bandwidth bound (goal: at least 85%)",
        "int4-emb-b128 decodes 20.0 tokens/s, llama.cpp Q4_K_M 25.0",
    ]
    with pytest.raises(ValueError, match="no row for int4-emb-b128; measured: int8-b32"):
        goal_failures([row("int8-b32")])


def test_table_renders_figures_and_dashes():
    table = render_table([row("int4-emb-b128", size_mb=262.4, ttft_64_ms=1234.6), row("pytorch-fp32")])
    lines = table.splitlines()
    assert lines[0].startswith("| variant | size MB | ÷ fp32 |")
    assert len(lines) == 4 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| int4-emb-b128 | 262 | 0.140 | – | 30.0 | – | 90% | 1,235 |" in lines[2]
    assert lines[3].startswith("| pytorch-fp32 | – | 0.140 |")


def test_prompt_has_the_asked_length():
    from families import tokenizer as family_tokenizer

    tokenizer = family_tokenizer("qwen2")  # the profile's family
    for length in (64, 512):
        chat, ids = prompt_chat(tokenizer, length)
        assert length - 8 <= len(ids) <= length  # whole words: a few tokens short at most
        text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    with pytest.raises(ValueError, match="the chat template alone is longer than 3 tokens"):
        prompt_chat(tokenizer, 3)


def test_arguments(tmp_path):
    args = parse_args(["--sizes", "0.5b", "--repeats", "2", "--variants", "int8-b32"])
    assert args.sizes == ["0.5b"] and args.repeats == 2 and args.variants == ["int8-b32"]
    for argv, message in (
        (["--sizes", "7b,0.5b"], "--sizes: unknown size 7b; choose from 0.5b, 1.5b"),
        (["--sizes", ","], "--sizes: unknown size (none given)"),
        (["--repeats", "0"], "--repeats must be at least 1, got 0"),
        (["--variants", "int4-emb-b128,int3"], "--variants: unknown variant int3; choose from int4-emb-b32, "),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.scale", *argv, "--out", str(tmp_path / "scale")],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2, argv
        assert message in result.stderr
        assert list(tmp_path.iterdir()) == []  # the error comes before any work


SAPPHIRE_RAPIDS = set(
    [
        "fpu",
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "bmi2",
        "avx_vnni",
        "avx512f",
        "avx512cd",
        "avx512vl",
        "avx512dq",
        "avx512bw",
        "avx512vbmi",
        "avx512_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_int8",
        "amx_bf16",
    ]
)


def test_llama_cpp_builds_for_the_cpu_with_amx_off():
    args = dict(option.removeprefix("-D").split("=") for option in peer.cmake_args("x86_64", SAPPHIRE_RAPIDS).split())
    assert args.pop("GGML_NATIVE") == "OFF"
    assert {args.pop(name) for name in peer.AMX_OPTIONS} == {"OFF"}  # the CPU has AMX; the build leaves it out
    assert set(args.values()) == {"ON"} and set(args) == set(peer.GGML_X86_OPTIONS)


def test_llama_cpp_build_without_avx512_turns_off_each_extension():
    zen3 = {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx512_vnni"}  # a stray flag without avx512f
    args = dict(option.removeprefix("-D").split("=") for option in peer.cmake_args("x86_64", zen3).split())
    assert {name for name, value in args.items() if value == "ON"} == {
        "GGML_SSE42",
        "GGML_AVX",
        "GGML_AVX2",
        "GGML_FMA",
        "GGML_F16C",
        "GGML_BMI2",
    }
    assert peer.cmake_args("arm64", SAPPHIRE_RAPIDS) == ""  # elsewhere, ggml's native build


def test_cpu_flags_are_read_from_the_first_processor(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_int8\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert peer.cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_int8"}
    assert peer.cpu_flags(tmp_path / "none") == set()


def test_teacher_student_memory_compares_models_and_processes():
    sizes = {
        "1.5b": {"rows": [{"name": "pytorch-bf16", "model_rss_mb": 3000.0, "peak_rss_mb": 3500.0}]},
        "0.5b": {"rows": [{"name": "int4-emb-b128", "model_rss_mb": 300.0, "peak_rss_mb": 350.0}]},
    }
    memory = teacher_student_memory(sizes)
    assert memory["model_mb"] == {"teacher": 3000.0, "student": 300.0, "saved": pytest.approx(0.9)}
    assert memory["process_mb"]["saved"] == pytest.approx(0.9)
    assert memory["teacher"] == "1.5b pytorch-bf16" and memory["student"] == "0.5b int4-emb-b128"
    report = render_report(
        {"date": "d", "hardware": {"cpu": "c", "cores": 2}, "sizes": {}, "failures": [], "goals_checked": False}
        | {"teacher_student": memory}
    )
    assert "| the model's own (peak less the runtime's) | 3,000 | 300 | 90.0% |" in report
    assert teacher_student_memory({"0.5b": sizes["0.5b"]}) is None  # no 1.5B row: nothing to compare

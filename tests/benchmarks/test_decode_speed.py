"""Decode rate of the default pipeline's model: PyTorch fp32 (models/finetuned) against the shipped
onnxruntime-genai export (models/onnx), in one pytest-benchmark run.

    make bench        (or: dvc repro && pytest tests/benchmarks --benchmark-only)

Each round is one request that decodes exactly NEW_TOKENS tokens (end token suppressed), greedy, batch 1.
"""

import onnxruntime_genai as og
import pytest
import torch
from conftest import ROOT

from slmops.core.task import load_task
from slmops.models.hf import load_model_and_tokenizer
from slmops.onnx.runtime import OnnxChatModel

NEW_TOKENS = 64
ROUNDS = 20
MESSAGE = "hi, my order ORD-42 (a blender) arrived broken, I want my money back asap!"
RATES: dict[str, float] = {}

pytestmark = pytest.mark.skipif(
    not (ROOT / "models/onnx/genai_config.json").is_file(),
    reason="needs the pipeline's models: run `make pipeline` (dvc repro) first",
)


@pytest.fixture(scope="module")
def chat():
    return load_task(ROOT / "data/task").messages(MESSAGE)


def tokens_per_second(benchmark) -> float:
    return NEW_TOKENS / benchmark.stats.stats.mean


@torch.inference_mode()
def test_decode_pytorch_fp32(benchmark, chat):
    model, tokenizer = load_model_and_tokenizer(ROOT / "models/finetuned")
    prompt = tokenizer(
        tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False),
        return_tensors="pt",
        add_special_tokens=False,
    )

    def decode():
        out = model.generate(
            **prompt,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        assert out.shape[1] - prompt["input_ids"].shape[1] == NEW_TOKENS

    benchmark.group = "decode"
    benchmark.pedantic(decode, rounds=ROUNDS, warmup_rounds=2)
    RATES["pytorch"] = tokens_per_second(benchmark)
    benchmark.extra_info["tokens_per_s"] = RATES["pytorch"]


def test_decode_onnxruntime_genai(benchmark, chat):
    model = OnnxChatModel(ROOT / "models/onnx")
    prompt = model.prompt_tokens(chat)

    def decode():
        params = og.GeneratorParams(model.model)
        params.set_search_options(
            do_sample=False, max_length=len(prompt) + NEW_TOKENS, min_length=len(prompt) + NEW_TOKENS
        )
        generator = og.Generator(model.model, params)
        generator.append_tokens(prompt)
        while not generator.is_done():
            generator.generate_next_token()
        assert len(generator.get_sequence(0)) - len(prompt) == NEW_TOKENS

    benchmark.group = "decode"
    benchmark.pedantic(decode, rounds=ROUNDS, warmup_rounds=2)
    RATES["onnx"] = tokens_per_second(benchmark)
    benchmark.extra_info["tokens_per_s"] = RATES["onnx"]
    if "pytorch" in RATES:  # the target: at least 5x PyTorch fp32, same model, same run
        ratio = RATES["onnx"] / RATES["pytorch"]
        benchmark.extra_info["speedup_over_pytorch"] = ratio
        print(
            f"\ndecode: PyTorch fp32 {RATES['pytorch']:.0f} tokens/s, onnxruntime-genai "
            f"{RATES['onnx']:.0f} tokens/s: {ratio:.1f}x"
        )
        assert ratio >= 5, f"onnxruntime-genai decodes only {ratio:.1f}x faster than PyTorch"

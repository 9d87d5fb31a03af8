"""Tiny random-weight models of real families, saved as Hugging Face folders, for the family matrix.

    build(family, folder, **overrides) -> folder

Each folder holds what a hub model of that family holds: config.json (the family's architecture), random
weights (safetensors), a byte-level BPE tokenizer trained locally on the task's data with the family's special
tokens, a `chat_template` in the family's style, and generation_config.json with the family's end token ids
(several where the family has several). `overrides` change keys of the model config (e.g. hidden_size,
tie_word_embeddings). Sizes are tiny (hidden 64, 2 layers, a vocabulary of about 400) so that a family runs
through the whole pipeline in seconds on a CPU.

The templates follow the families' published ones, trimmed of tool calling:
- llama3:  <|begin_of_text|><|start_header_id|>role<|end_header_id|>\\n\\ntext<|eot_id|>, system optional;
           ends with <|end_of_text|> or <|eot_id|> (or <|eom_id|>).
- qwen2:   ChatML <|im_start|>role\\ntext<|im_end|>\\n; with no system message the template adds
           "You are a helpful assistant."; ends with <|im_end|> or <|endoftext|>.
- phi3:    Phi-4-mini's shape (fused qkv_proj and gate_up_proj): <|system|>text<|end|><|user|>text<|end|>
           <|assistant|>; a chat rendered without the generation prompt ends with <|endoftext|>; ends with
           <|end|> or <|endoftext|>.
- mistral: <s>[INST] text [/INST]answer</s>; no system role: the system text opens the first user message.
- gemma:   <bos><start_of_turn>user\\ntext<end_of_turn>\\n<start_of_turn>model\\n; no system role: the system text
           opens the first user message; tied embeddings; ends with <eos> or <end_of_turn>.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationConfig,
    PreTrainedTokenizerFast,
)

ROOT = Path(__file__).resolve().parent.parent
VOCAB_SIZE = 1000  # before special tokens; never equal to a layer width (the builder would take it for the LM head)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
QWEN2_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set loop_messages = messages %}{% endif %}"
    "{{ bos_token }}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first %}{{ '[INST] ' + system + message['content'] + ' [/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') + message['content'] | trim "
    "+ '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# Per family: architecture (a transformers model_type), special tokens, the tokenizer's roles for them, the end
# token ids of generation_config.json, whether the tokenizer adds a BOS itself, the template, config keys.
SPECS = {
    "llama3": {
        "model_type": "llama",
        "special": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            "<|eot_id|>",
        ],
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": None,
        "ends": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
        "adds_bos": True,
        "template": LLAMA3_TEMPLATE,
        "config": {"tie_word_embeddings": False, "rope_theta": 500000.0},
    },
    "qwen2": {
        "model_type": "qwen2",
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "ends": ["<|im_end|>", "<|endoftext|>"],
        "adds_bos": False,
        "template": QWEN2_TEMPLATE,
        "config": {"tie_word_embeddings": True, "rope_theta": 1000000.0},
    },
    "phi3": {
        "model_type": "phi3",
        "special": ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        "bos": "<|endoftext|>",
        "eos": "<|endoftext|>",
        "pad": "<|endoftext|>",
        "ends": ["<|end|>", "<|endoftext|>"],
        "adds_bos": False,
        "template": PHI3_TEMPLATE,
        # The builder's Phi3 path without LongRoPE needs original_max_position_embeddings == max_position_embeddings.
        "config": {"tie_word_embeddings": False, "original_max_position_embeddings": 256},
    },
    "mistral": {
        "model_type": "mistral",
        "special": ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
        "bos": "<s>",
        "eos": "</s>",
        "pad": None,
        "ends": ["</s>"],
        "adds_bos": True,
        "template": MISTRAL_TEMPLATE,
        "config": {"tie_word_embeddings": False, "sliding_window": None},
    },
    "gemma": {
        "model_type": "gemma",
        "special": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        "bos": "<bos>",
        "eos": "<eos>",
        "pad": "<pad>",
        "ends": ["<eos>", "<end_of_turn>"],
        "adds_bos": True,
        "template": GEMMA_TEMPLATE,
        "config": {"tie_word_embeddings": True, "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh"},
    },
}
FAMILIES = tuple(SPECS)

SHAPE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,  # head size 16: onnxruntime's GroupQueryAttention needs a multiple of 16
    "num_key_value_heads": 2,
    "intermediate_size": 96,
    "max_position_embeddings": 256,
}


@cache
def corpus() -> tuple[str, ...]:
    """The seed messages and their canonical answers: the text the pipeline's prompts and answers are made of."""
    from slmops.core.task import render_answer

    rows = [json.loads(line) for line in (ROOT / "data/seed/labelled.jsonl").read_text().splitlines()[:300]]
    instruction = (ROOT / "data/task/task.yaml").read_text()
    return (instruction, *(r["message"] for r in rows), *(render_answer(r["label"]) for r in rows))


def tokenizer(family: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the task's text, with the family's special tokens and chat template."""
    spec = SPECS[family]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE + len(spec["special"]),
        special_tokens=spec["special"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus(), trainer=trainer)
    if spec["adds_bos"]:
        bos = spec["bos"]
        bpe.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bpe.token_to_id(bos))]
        )
    else:
        bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        unk_token="<unk>" if "<unk>" in spec["special"] else None,
    )
    fast.chat_template = spec["template"]
    return fast


def build(family: str, folder: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a tiny random-weight model of `family` (one of FAMILIES) to `folder`; returns the folder.

    `overrides`: model config keys (e.g. tie_word_embeddings=True). ValueError for an unknown family."""
    if family not in SPECS:
        raise ValueError(f"unknown family '{family}'; one of {', '.join(FAMILIES)}")
    spec = SPECS[family]
    folder = Path(folder)
    tok = tokenizer(family)
    ids = {name: tok.convert_tokens_to_ids(name) for name in spec["special"]}
    ends = [ids[name] for name in spec["ends"]]
    config = AutoConfig.for_model(
        spec["model_type"],
        bos_token_id=ids.get(spec["bos"]),
        eos_token_id=ends if len(ends) > 1 else ends[0],
        pad_token_id=ids.get(spec["pad"]),
        # vocab_size may be overridden upwards (a hub model's padded vocabulary); the ids past the tokenizer are unused
        **{"vocab_size": len(tok), **SHAPE, **spec["config"], **overrides},
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    GenerationConfig(
        bos_token_id=ids.get(spec["bos"]),
        eos_token_id=ends,
        pad_token_id=ids.get(spec["pad"]),
        do_sample=False,
    ).save_pretrained(folder)
    return folder

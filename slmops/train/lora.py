"""Fine-tuning on the human-labelled set: LoRA or QLoRA adapters with peft, or all weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM

from slmops.core.config import Lora
from slmops.core.errors import InputError


def check_method_runs_here(method: str) -> None:
    """QLoRA quantises the base to 4 bits with bitsandbytes kernels that exist only for CUDA."""
    if method != "qlora":
        return
    if not torch.cuda.is_available():
        raise InputError(
            "finetune.method: qlora needs a CUDA GPU and bitsandbytes, and this machine has no CUDA device; "
            "use finetune.method: lora on a CPU"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InputError("finetune.method: qlora needs the bitsandbytes package (pip install 'slmops[qlora]')")


def load_base(folder: Path, method: str):
    if method != "qlora":
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    base = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization, device_map={"": 0})
    return prepare_model_for_kbit_training(base)


def with_adapter(base, lora: Lora):
    """Wrap `base` with peft LoRA adapters; InputError naming any target module the model lacks."""
    present = {name.rsplit(".", 1)[-1] for name, _ in base.named_modules()}
    missing = [m for m in lora.target_modules if m not in present]
    if missing:
        raise InputError(
            f"finetune.lora.target_modules: {', '.join(missing)} not in the model "
            f"(its linear layers include: {', '.join(sorted(n for n in present if n.endswith('proj')))})"
        )
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, config)


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def merged_model(base_folder: Path, adapter_folder: Path):
    """Full-precision base with the adapter merged in (for QLoRA too: merge into the unquantised base)."""
    base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_folder).merge_and_unload()

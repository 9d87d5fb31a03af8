"""Fine-tuning on the human-labelled set: LoRA or QLoRA adapters with peft, or all weights."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM

from slmops.core.config import ALL_LINEAR, Lora
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
    # each process of a data-parallel run holds its own copy on its own device (torchrun's LOCAL_RANK)
    device = int(os.environ.get("LOCAL_RANK", "0"))
    base = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization, device_map={"": device})
    return prepare_model_for_kbit_training(base)


def with_adapter(base, lora: Lora):
    """Wrap `base` with peft LoRA adapters on `lora.target_modules`: a list of module names, or "all-linear"
    (peft: every linear layer but the output layer, so it fits any family, e.g. Phi-3's fused qkv_proj).

    InputError naming any listed module the model lacks, or one whose weight is tied to another module's
    (lm_head and embed_tokens with tie_word_embeddings): merging an adapter into a shared weight would change
    both ends, so the merged model would no longer equal the trained adapter."""
    if lora.target_modules != ALL_LINEAR:
        check_targets(base, lora.target_modules)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules if lora.target_modules == ALL_LINEAR else list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, config)


def check_targets(model, targets: list[str]) -> None:
    """InputError for a target module the model lacks or one whose weight it shares (tied embeddings)."""
    modules = dict(model.named_modules())
    present = {name.rsplit(".", 1)[-1] for name in modules}
    missing = [m for m in targets if m not in present]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, torch.nn.Linear)})
        raise InputError(
            f"finetune.lora.target_modules: {', '.join(missing)} not in the model "
            f"(its linear layers: {', '.join(linear)}); or use all-linear, which fits every family"
        )
    owners: dict[int, list[str]] = {}
    for name, module in modules.items():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.nn.Parameter):
            owners.setdefault(id(weight), []).append(name)
    for names in owners.values():
        tied = [n for n in names if n.rsplit(".", 1)[-1] in targets]
        if tied and len(names) > 1:
            raise InputError(
                f"finetune.lora.target_modules: {tied[0].rsplit('.', 1)[-1]} shares its weight with "
                f"{', '.join(n for n in names if n != tied[0])} (tie_word_embeddings), so the merged model would "
                "differ from the trained adapter; leave it out of the list (all-linear leaves the output layer out)"
            )


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def merged_model(base_folder: Path, adapter_folder: Path):
    """Full-precision base with the adapter merged in (for QLoRA too: merge into the unquantised base)."""
    base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    return PeftModel.from_pretrained(base, adapter_folder).merge_and_unload()

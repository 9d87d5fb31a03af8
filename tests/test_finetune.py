import pytest
import torch
from conftest import default

from slmops.core.errors import InputError
from slmops.train.lora import check_method_runs_here, merged_model, trainable_parameters, with_adapter

LORA = default("finetune.lora", r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])


def test_qlora_on_a_cpu_fails_at_once_with_the_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        InputError, match="qlora needs a CUDA GPU and bitsandbytes, and this machine has no CUDA device"
    ):
        check_method_runs_here("qlora")
    check_method_runs_here("lora")
    check_method_runs_here("none")


def test_lora_trains_only_the_adapter_and_merges_back(tiny_model, tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path / "base")
    model = with_adapter(tiny_model, LORA)
    trainable, total = trainable_parameters(model)
    assert 0 < trainable < total / 5
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    ids = torch.tensor([[1, 2, 3, 4]])
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    merged = merged_model(tmp_path / "base", tmp_path / "adapter")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_unknown_target_module_is_named(tiny_model):
    with pytest.raises(InputError, match="finetune.lora.target_modules: qkv_proj not in the model"):
        with_adapter(tiny_model, LORA.model_copy(update={"target_modules": ["q_proj", "qkv_proj"]}))

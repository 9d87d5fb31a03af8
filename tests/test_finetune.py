import pytest
import torch
from conftest import default
from families import FAMILIES, build

from slmops.core.errors import InputError
from slmops.train.lora import check_method_runs_here, merged_model, trainable_parameters, with_adapter

LORA = default("finetune.lora", r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
SEVEN = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
]  # the default list until all-linear
LORA_SEVEN = default("finetune.lora", target_modules=SEVEN)


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
    merged = assert_merges_to_the_adapter(model, tmp_path / "base", tmp_path / "adapter")
    assert not any("lora" in name for name, _ in merged.named_parameters())


def assert_merges_to_the_adapter(model, base_dir, adapter_dir):
    """Give the adapter a non-zero update, save it, merge it into the base saved in `base_dir`: the merged model
    must give the adapter's logits. Returns the merged model."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.01)
    ids = torch.tensor([[1, 2, 3, 4]])
    expected = model(input_ids=ids).logits
    model.save_pretrained(adapter_dir)
    merged = merged_model(base_dir, adapter_dir)
    torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)
    return merged


def test_unknown_target_module_is_named(tiny_model):
    with pytest.raises(InputError, match="finetune.lora.target_modules: qkv_proj not in the model"):
        with_adapter(tiny_model, LORA.model_copy(update={"target_modules": ["q_proj", "qkv_proj"]}))


def adapted(model) -> dict[str, torch.Tensor]:
    """{module name: lora_A weight} of every module that got an adapter."""
    return {n.split(".lora_A")[0]: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}


def test_all_linear_on_the_default_llama_is_the_former_explicit_list_weight_for_weight(tiny_hf_dir):
    """The default's change from the seven projections to all-linear leaves the default student's adapter as it was."""
    from transformers import AutoModelForCausalLM

    lists = {}
    for targets in ("all-linear", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]):
        torch.manual_seed(0)
        lora = default("finetune.lora", target_modules=targets)
        lists[str(targets)] = adapted(with_adapter(AutoModelForCausalLM.from_pretrained(tiny_hf_dir), lora))
    by_all_linear, by_list = lists.values()
    assert sorted(by_all_linear) == sorted(by_list)
    assert {name.rsplit(".", 1)[-1] for name in by_all_linear} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip
    for name, weight in by_all_linear.items():
        torch.testing.assert_close(weight, by_list[name], atol=0, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_all_linear_fits_every_family_and_leaves_the_output_layer_out(family, tmp_path):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(build(family, tmp_path))
    linear = {n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    model = with_adapter(base, default("finetune.lora", target_modules="all-linear"))
    names = {n.removeprefix("base_model.model.") for n in adapted(model)}
    assert names == linear
    if family == "phi3":  # fused projections: the former default list named modules Phi-3 does not have
        assert {n.rsplit(".", 1)[-1] for n in names} == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
        with pytest.raises(InputError, match=r"q_proj, k_proj, v_proj, gate_proj, up_proj not in the model \(its "):
            with_adapter(AutoModelForCausalLM.from_pretrained(tmp_path), LORA_SEVEN)


@pytest.mark.parametrize("module", ["lm_head", "embed_tokens"])
def test_a_tied_embedding_in_the_list_is_refused_with_the_reason(tmp_path, module):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(build("gemma", tmp_path))
    assert base.config.tie_word_embeddings
    other = "model.embed_tokens" if module == "lm_head" else "lm_head"
    with pytest.raises(InputError, match=rf"target_modules: {module} shares its weight with {other} \(tie_word_emb"):
        with_adapter(base, default("finetune.lora", target_modules=["q_proj", module]))


def test_an_untied_lm_head_in_the_list_trains_and_merges_to_the_adapter(tmp_path):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(build("llama3", tmp_path / "base"))
    assert not base.config.tie_word_embeddings
    model = with_adapter(base, default("finetune.lora", target_modules=["q_proj", "lm_head"]))
    assert_merges_to_the_adapter(model, tmp_path / "base", tmp_path / "adapter")

"""The family matrix: tiny random-weight models of real families (tests/families.py) through the pipeline."""

import pytest
from families import FAMILIES, SPECS, build
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

CHAT = [
    {"role": "system", "content": "Answer in JSON."},
    {"role": "user", "content": "Where is order ORD-12?"},
    {"role": "assistant", "content": '{"intent": "track_order"}'},
]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {family: build(family, tmp_path_factory.mktemp(family)) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_factory_writes_a_folder_of_the_family(folders, family):
    folder = folders[family]
    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ends = GenerationConfig.from_pretrained(folder).eos_token_id
    assert config.model_type == SPECS[family]["model_type"]
    assert config.vocab_size == len(tokenizer)
    assert ends == [tokenizer.convert_tokens_to_ids(t) for t in SPECS[family]["ends"]]
    rendered = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert "Answer in JSON." in rendered and "ORD-12" in rendered
    for token in SPECS[family]["special"]:
        assert tokenizer.tokenize(token) == [token], f"{family}: {token} is not one token"


def test_factory_templates_keep_each_familys_system_handling(folders):
    render = {
        f: AutoTokenizer.from_pretrained(folders[f]).apply_chat_template(
            CHAT[1:2], add_generation_prompt=True, tokenize=False
        )
        for f in FAMILIES
    }
    assert render["qwen2"].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert render["llama3"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert render["phi3"] == "<|user|>Where is order ORD-12?<|end|><|assistant|>"
    folded = AutoTokenizer.from_pretrained(folders["gemma"]).apply_chat_template(CHAT, tokenize=False)
    assert "<start_of_turn>user\nAnswer in JSON.\n\nWhere is order ORD-12?<end_of_turn>" in folded
    phi3 = AutoTokenizer.from_pretrained(folders["phi3"]).apply_chat_template(CHAT, tokenize=False)
    assert phi3.endswith("<|end|><|endoftext|>")


def test_factory_refuses_an_unknown_family(tmp_path):
    with pytest.raises(ValueError, match="unknown family 'gpt2'"):
        build("gpt2", tmp_path)

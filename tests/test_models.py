import pytest
import torch
from conftest import TINY_LLAMA, default

from slmops.core.errors import InputError
from slmops.core.task import render_answer
from slmops.models.hf import (
    build_llama,
    count_parameters,
    hash_weights,
    load_model_and_tokenizer,
    resolve_model,
    tokenizer_fingerprint,
    train_chat_tokenizer,
)


def test_tokenizer_spells_an_id_number_as_one_token_everywhere(tokenizer):
    message = tokenizer.convert_ids_to_tokens(
        tokenizer("my order ORD-91, please", add_special_tokens=False)["input_ids"]
    )
    answer = tokenizer.convert_ids_to_tokens(tokenizer('{"order_id": "ORD-91"}', add_special_tokens=False)["input_ids"])
    assert "91" in message and "91" in answer
    longer = tokenizer.convert_ids_to_tokens(tokenizer("12345", add_special_tokens=False)["input_ids"])
    assert longer == ["12", "34", "5"]
    assert tokenizer.decode(tokenizer("order ORD-07 and 12345")["input_ids"]) == "order ORD-07 and 12345"


def tokens(tokenizer, text: str) -> list[str]:
    return [tokenizer.decode([i]) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def test_tokenizer_spells_a_word_as_the_same_token_in_the_message_and_in_the_answer(tokenizer):
    message = "".join(f"|{t}" for t in tokens(tokenizer, "my charger from order ORD-12 will not charge"))
    answer = "".join(f"|{t}" for t in tokens(tokenizer, '{"product": "charger", "order_id": "ORD-12"}'))
    word = "".join(f"|{t}" for t in tokens(tokenizer, "charger"))
    assert f"| {word}| " in message and f"{word}|" in answer  # the same tokens, the space one of its own
    assert tokenizer.decode(tokenizer("my  charger,\tthe\nphone case")["input_ids"]) == "my  charger,\tthe\nphone case"


def test_saved_tokenizer_gives_the_ids_of_the_split_it_was_trained_with(tokenizer, labelled):
    """onnxruntime-genai cannot read the lookahead split, so it is not saved; without it the ids must not change."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    assert "(?=" not in tokenizer.backend_tokenizer.to_str()
    trained = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    trained.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"\s(?=\p{L})"), behavior="isolated"), trained.pre_tokenizer]
    )
    texts = [r["message"] for r in labelled] + [render_answer(r["label"]) for r in labelled]
    assert [e.ids for e in trained.encode_batch(texts)] == [
        e.ids for e in tokenizer.backend_tokenizer.encode_batch(texts)
    ]


def test_tokenizer_spells_each_answer_key_with_its_punctuation_as_one_token(tokenizer):
    answer = '{"intent": "refund_request", "order_id": null, "product": "monitor", "urgency": "high"}'
    pieces = tokens(tokenizer, answer)
    assert pieces[0] == '{"intent": "'
    assert '", "order_id": ' in pieces and ', "product": "' in pieces and '", "urgency": "' in pieces
    assert pieces[-1] == '"}'
    assert tokenizer.decode(tokenizer(answer)["input_ids"]) == answer


def test_a_vocabulary_too_small_for_its_fixed_tokens_names_the_key(labelled):
    pieces = [f', "field_{i}": ' for i in range(60)]
    with pytest.raises(InputError, match=r"teacher.bootstrap.vocab_size\) 400 leaves 240 tokens .* 60 answer-key"):
        train_chat_tokenizer([r["message"] for r in labelled[:20]], 400, pieces)


def test_digit_pair_tokens_start_from_one_shared_embedding(tiny_model, tokenizer):
    def mean_cosine(ids):
        rows = torch.nn.functional.normalize(tiny_model.get_input_embeddings().weight.detach()[ids], dim=1)
        similarity = rows @ rows.T
        return float((similarity.sum() - similarity.diagonal().sum()) / (len(ids) * (len(ids) - 1)))

    digits = tokenizer.convert_tokens_to_ids([f"{n:02d}" for n in range(100)])
    others = [i for i in range(len(tokenizer)) if i not in digits][:100]
    assert mean_cosine(digits) > 0.35 and abs(mean_cosine(others)) < 0.05


def test_chat_template_and_end_token(tokenizer, task):
    prompt = tokenizer.apply_chat_template(
        task.messages("where is my order"), add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|user|>where is my order<|end|><|assistant|>"
    assert tokenizer.eos_token == "<|end|>" and tokenizer.pad_token == "<|pad|>"


def test_fingerprint_tells_tokenizers_apart(tokenizer, labelled):
    from slmops.models.hf import train_chat_tokenizer

    other = train_chat_tokenizer([r["message"] for r in labelled[200:300]], 400)
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(tokenizer)
    assert tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(other)


def test_build_llama_refuses_a_width_equal_to_the_vocabulary(tokenizer):
    with pytest.raises(InputError, match=f"intermediate_size equals the vocabulary size \\({len(tokenizer)}\\)"):
        build_llama(TINY_LLAMA.model_copy(update={"intermediate_size": len(tokenizer)}), tokenizer)


def test_saved_model_loads_from_a_local_folder_and_hashes_stably(tiny_model, tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    folder, commit = resolve_model(str(tmp_path), None, "student.model")
    assert folder == tmp_path and commit is None
    model, loaded = load_model_and_tokenizer(folder)
    assert count_parameters(model) == count_parameters(tiny_model)
    assert loaded.chat_template == tokenizer.chat_template
    first = hash_weights(tmp_path)
    assert first == hash_weights(tmp_path)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(tmp_path)
    assert hash_weights(tmp_path) != first


def test_resolve_model_errors_name_the_key(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="teacher.model: folder '.*empty' has no config.json"):
        resolve_model(str(tmp_path / "empty"), None, "teacher.model")
    with pytest.raises(InputError, match="student.model: './nowhere' is not a model folder"):
        resolve_model("./nowhere", None, "student.model")


def test_hub_id_without_network_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        InputError, match="teacher.model: cannot fetch hub model 'example-org/no-such-model' at revision main"
    ):
        resolve_model("example-org/no-such-model", None, "teacher.model")


def test_hash_weights_needs_weight_files(tmp_path):
    with pytest.raises(InputError, match="no weight files"):
        hash_weights(tmp_path)


def test_end_token_ids_add_the_generation_configs_to_the_tokenizers(tmp_path):
    from families import build
    from transformers import AutoTokenizer, GenerationConfig

    from slmops.models.hf import end_token_ids

    folder = build("gemma", tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = end_token_ids(tokenizer, GenerationConfig.from_pretrained(folder))
    assert ids == [tokenizer.convert_tokens_to_ids("<eos>"), tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    assert end_token_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<eos>")]


def test_generation_stops_at_any_end_token_and_counts_the_answer_finished(tmp_path):
    """A model whose answer ends with an end id of its generation config only (Phi-3's <|end|>; the tokenizer's eos
    is <|endoftext|>) is finished, cut there."""
    from families import build
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmops.models.generate import generate_answers

    folder = build("phi3", tmp_path)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    end = tokenizer.convert_tokens_to_ids("<|end|>")

    def always_end(module, inputs, logits):
        forced = torch.full_like(logits, -1e4)
        forced[..., end] = 0.0
        return forced

    model.lm_head.register_forward_hook(always_end)
    chat = [{"role": "user", "content": "Where is order ORD-12?"}]
    settings = default("synthesize.generation", max_new_tokens=8)
    (answer,) = generate_answers(model, tokenizer, [chat], settings)
    assert answer.finished and answer.token_ids == [end] and answer.text == ""
    model.generation_config.eos_token_id = tokenizer.eos_token_id  # only <|endoftext|>: <|end|> no longer ends it
    (answer,) = generate_answers(model, tokenizer, [chat], settings)
    assert not answer.finished and answer.token_ids == [end] * 8

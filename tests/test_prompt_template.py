"""Foundry Local's PromptTemplate for the chat templates of real families: each part holds its role's segment,
and the parts assemble to the Hugging Face rendering of the same chat."""

import pytest
from families import FAMILIES, build

from slmops.core.errors import InputError
from slmops.foundry.package import CONTENT, assemble, hf_renderer, prompt_template

INSTRUCTION = "Extract the order as JSON."
SYSTEM = {"role": "system", "content": "Answer in one word."}
USER = {"role": "user", "content": "where is ORD-12?"}
TURNS = [USER, {"role": "assistant", "content": '{"order_id": "ORD-12"}'}, {"role": "user", "content": "and ORD-9?"}]
FOLDS_SYSTEM = {"mistral", "gemma"}  # no system turn: the system text opens the first user message
DEFAULT_SYSTEM = {"qwen2": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    render, bos, ends = hf_renderer(build(request.param, tmp_path_factory.mktemp(request.param)))

    def rendered(chat):  # the Hugging Face rendering, without the BOS the runtime's tokenizer adds
        text = render(chat, True)
        return text[len(bos) :] if bos and text.startswith(bos) else text

    return request.param, prompt_template(render, INSTRUCTION, bos, ends), rendered


def test_parts_hold_their_role_segment_only(family):
    name, template, _ = family
    for role in ("system", "user", "assistant", "prompt"):
        assert template[role].count(CONTENT) == 1, role
    for role in ("system", "user", "assistant"):
        assert "helpful assistant" not in template[role] and "<|endoftext|>" not in template[role], role
        assert INSTRUCTION not in template[role]


def test_a_user_message_assembles_to_the_rendering_without_a_default_system_prompt(family):
    name, template, rendered = family
    assert rendered([USER]) == DEFAULT_SYSTEM.get(name, "") + assemble(template, [USER])


def test_several_turns_assemble_to_the_rendering(family):
    name, template, rendered = family
    assert assemble(template, TURNS) == rendered(TURNS)[len(DEFAULT_SYSTEM.get(name, "")) :]


def test_a_system_and_a_user_message_assemble_to_the_rendering(family):
    name, template, rendered = family
    if name in FOLDS_SYSTEM:  # the template has no system segment; `prompt` carries the folded instruction
        assert template["system"] == template["user"]
    else:
        assert assemble(template, [SYSTEM, USER]) == rendered([SYSTEM, USER])
        assert assemble(template, [SYSTEM, *TURNS]) == rendered([SYSTEM, *TURNS])


def test_prompt_is_the_single_message_prompt_with_the_task_instruction(family):
    name, template, rendered = family
    system = {"role": "system", "content": INSTRUCTION}
    assert template["prompt"].replace(CONTENT, USER["content"]) == rendered([system, USER])


def test_the_two_templates_the_issue_names():
    """Qwen2 no longer embeds its default system prompt in every part; Phi-3's parts no longer end with
    <|endoftext|> (which the template appends to a chat that asks for no answer)."""
    import tempfile
    from pathlib import Path

    expected = {
        "qwen2": {
            "system": "<|im_start|>system\n{Content}<|im_end|>\n",
            "user": "<|im_start|>user\n{Content}<|im_end|>\n",
            "assistant": "<|im_start|>assistant\n{Content}<|im_end|>\n",
            "prompt": f"<|im_start|>system\n{INSTRUCTION}<|im_end|>\n<|im_start|>user\n{{Content}}<|im_end|>\n"
            "<|im_start|>assistant\n",
        },
        "phi3": {
            "system": "<|system|>{Content}<|end|>",
            "user": "<|user|>{Content}<|end|>",
            "assistant": "<|assistant|>{Content}<|end|>",
            "prompt": f"<|system|>{INSTRUCTION}<|end|><|user|>{{Content}}<|end|><|assistant|>",
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, parts in expected.items():
            render, bos, ends = hf_renderer(build(name, Path(tmp) / name))
            assert prompt_template(render, INSTRUCTION, bos, ends) == parts


def _jinja(source: str):
    import jinja2

    template = jinja2.Environment().from_string(source)
    return lambda messages, add_generation_prompt: template.render(
        messages=messages, add_generation_prompt=add_generation_prompt
    )


def test_a_template_that_drops_system_messages_gets_an_empty_system_part():
    render = _jinja(
        "{% for m in messages %}{% if m.role != 'system' %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    assert prompt_template(render, INSTRUCTION) == {
        "system": "",
        "user": "<|user|>{Content}<|end|>",
        "assistant": "<|assistant|>{Content}<|end|>",
        "prompt": "<|user|>{Content}<|end|><|assistant|>",
    }


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("{% for m in messages %}<{{ m.role }}>{{ m.content | lower }}{% endfor %}", "rewrites or drops message"),
        ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>", "cannot cut an assistant"),
        ("{% if add_generation_prompt %}<assistant>{% endif %}", "rewrites or drops message"),
    ],
)
def test_a_template_that_rewrites_or_drops_messages_is_refused(source, error):
    with pytest.raises(InputError, match=error):
        prompt_template(_jinja(source), INSTRUCTION)


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("{% for message in messages %}{{ message.content", "does not compile|fails on a chat"),
        ("{{ raise_exception('nope') }}", "the chat template fails on a chat of .*: nope"),
    ],
)
def test_a_failing_template_is_an_input_error_naming_the_folder(tmp_path, template, error):
    import json

    from slmops.foundry.package import inference_model

    folder = build("qwen2", tmp_path / "qwen2")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").write_text(template)
    with pytest.raises(InputError, match=error) as err:
        inference_model("x", folder, INSTRUCTION)
    assert str(folder) in str(err.value)

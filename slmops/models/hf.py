"""Tokenizers and causal LMs: train a chat tokenizer, build a Llama from a config, load and pin a model."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from slmops.core.config import LlamaShape
from slmops.core.errors import InputError

SPECIAL_TOKENS = ["<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# The bootstrap models serve one task, so their template leaves the system message out: on a
# 2-core CPU the instruction would be most of every training sequence.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
DIGIT_PAIRS = [f"{n:02d}" for n in range(100)]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".onnx", ".data")


def train_chat_tokenizer(texts: list[str], vocab_size: int, pieces: list[str] = ()) -> PreTrainedTokenizerFast:
    """Byte-level BPE of `vocab_size` tokens in all with a chat template, made so that a small model copies
    values from the message into its answer by copying tokens.

    - A word is the same token in the message and in the answer: the space before a word is a token of its own
      (" charger" in "my charger" would otherwise be another token than "charger" in `"product": "charger"`,
      and a small model must then learn that pair for every value instead of one copying rule).
    - Every pair of digits is one token (ORD-48 -> ORD - 48; 12345 -> 12 34 5), so an id's number is one token
      on both sides too.
    - `pieces` (e.g. slmops.core.task.answer_key_pieces) are single tokens, so that an answer's fixed JSON
      between its values costs one token per key instead of four.

    Measured on the default task: without the first two, seed 1's teacher confused single-token products (exact
    match 68%); with all three, its product field is 100% on every seed tried.
    InputError when `vocab_size` leaves byte-level BPE fewer tokens than its 256-byte alphabet plus the special
    tokens.
    """
    pieces = [p for p in dict.fromkeys(pieces) if p not in DIGIT_PAIRS]
    bpe_size = vocab_size - len(DIGIT_PAIRS) - len(pieces)
    least = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
    if bpe_size < least:
        raise InputError(
            f"vocab_size (teacher.bootstrap.vocab_size) {vocab_size} leaves {bpe_size} tokens for byte-level BPE "
            f"after {len(DIGIT_PAIRS)} digit pairs and {len(pieces)} answer-key tokens; it needs at least {least} "
            f"(256 bytes and {len(SPECIAL_TOKENS)} special tokens): raise it to {vocab_size + least - bpe_size} or more"
        )
    saved = [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"\s(?=\p{L})"), behavior="isolated"), *saved]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    # The split only shapes the merges: none joins a space to a letter, so the tokenizer gives the same ids
    # without it, and onnxruntime-genai's tokenizer, which has no lookahead regex, can read the saved one.
    bpe.pre_tokenizer = pre_tokenizers.Sequence(saved)
    bpe.add_tokens(DIGIT_PAIRS + pieces)  # matched before BPE, longest first
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<|pad|>", eos_token="<|end|>", bos_token=None, unk_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the vocabulary: two tokenizers with the same fingerprint give the same ids."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr(vocab).encode()).hexdigest()


def build_llama(shape: LlamaShape, tokenizer, end_ids: list[int] | None = None) -> LlamaForCausalLM:
    """A randomly initialised Llama of `shape` (keys of LlamaConfig) for `tokenizer`, ending its answers with any
    of `end_ids` (default: the tokenizer's end token). Digit-pair tokens start alike (share_digit_embeddings).

    InputError when a layer is as wide as the vocabulary (the onnxruntime-genai builder would take it for
    the LM head; DESIGN.md, facts about the stack)."""
    config = shape.model_dump()
    vocab_size = len(tokenizer)
    widths = {k: config[k] for k in ("hidden_size", "intermediate_size")}
    clash = [k for k, width in widths.items() if width == vocab_size]
    if clash:
        # The onnxruntime-genai builder takes any linear layer as wide as the vocabulary for the LM head.
        raise InputError(f"{clash[0]} equals the vocabulary size ({vocab_size}); choose another width")
    llama_config = LlamaConfig(
        vocab_size=vocab_size,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=end_ids if end_ids and len(end_ids) > 1 else tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        **config,
    )
    model = LlamaForCausalLM(llama_config)
    share_digit_embeddings(model, tokenizer)
    return model


def share_digit_embeddings(model, tokenizer) -> None:
    """Give the tokenizer's digit-pair tokens ("00" to "99"), where it has all of them, one shared random vector
    on top of their own random embeddings (same scale, the config's initializer_range).

    What a copying head keys on, "this token is a number", is then there from the first step instead of being
    learned by 100 rare tokens one by one. Measured on the default task: with seed 2, the teacher was still
    guessing order ids after 5 epochs (order_id 52%); with the shared start it copied them by step ~500 (100%).
    """
    vocab = tokenizer.get_vocab()
    if not all(pair in vocab for pair in DIGIT_PAIRS):
        return
    ids = [vocab[pair] for pair in DIGIT_PAIRS]
    embeddings = model.get_input_embeddings().weight
    with torch.no_grad():
        shared = torch.randn(embeddings.shape[1]) * model.config.initializer_range
        embeddings[ids] += shared


def end_token_ids(tokenizer, generation_config=None) -> list[int]:
    """The ids that end an answer: the tokenizer's end token, then any other of the model's generation config
    (Gemma ends a turn with <end_of_turn>, Phi-3 with <|end|>, Llama 3 with <|eot_id|>, each besides its eos)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    configured = getattr(generation_config, "eos_token_id", None)
    for token in configured if isinstance(configured, list) else [configured]:
        if token is not None and token not in ids:
            ids.append(token)
    return ids


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def hash_weights(folder: str | Path) -> str:
    """SHA-256 over the weight files of a model folder, in name order."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise InputError(f"{folder}: no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(folder)).encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def resolve_model(name_or_path: str, revision: str | None, key: str) -> tuple[Path, str | None]:
    """A local folder as it is, or a hub id downloaded (or found in the HF cache) at `revision`.

    Returns the local folder and the commit it came from (None for a local folder).
    `key` is the params key that named the model, for the error message.
    """
    local = Path(name_or_path)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise InputError(f"{key}: folder '{local}' has no config.json; is it a Hugging Face model folder?")
        return local, None
    if local.exists() or name_or_path.startswith((".", "/")):
        raise InputError(f"{key}: '{name_or_path}' is not a model folder")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name_or_path, revision=revision)
    except Exception as err:  # network, auth, unknown repo or revision: all end the same way for the user
        raise InputError(
            f"{key}: cannot fetch hub model '{name_or_path}' at revision {revision or 'main'}: {err}"
        ) from None
    return Path(folder), Path(folder).name


def load_model_and_tokenizer(folder: str | Path, dtype: torch.dtype = torch.float32):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise InputError(f"{folder}: the tokenizer has no chat template; the pipeline prompts through it")
    return model.eval(), tokenizer

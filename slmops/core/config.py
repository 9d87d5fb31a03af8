"""The params of the pipeline, one typed section per stage: the one definition of params.yaml.

Stages receive these objects (`params.distill.train.learning_rate`), `slmops validate` checks a file
against them, and params.schema.json (beside this file, for editors and readers) is generated from them:

    python -m slmops.core.config        # rewrites slmops/core/params.schema.json

Every field is required in params.yaml (DVC declares params key by key, and a key it cannot find is an error);
types are strict (a string is not a number, 1 is not true), unknown keys are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slmops.core.metrics import GATE_KEYS, PER_RECORD_KEYS

SCHEMA_PATH = Path(__file__).with_name("params.schema.json")
ALL_LINEAR = "all-linear"  # peft's shorthand for every linear layer but the output layer


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


# --- shared shapes -------------------------------------------------------------------------------------


class Train(Section):
    """Hugging Face Trainer settings of one training run (AdamW, cosine schedule)."""

    epochs: float = Field(gt=0, description="Passes over the training data.")
    batch_size: int = Field(ge=1, description="Examples per optimisation step.")
    learning_rate: float = Field(gt=0, le=1, description="Peak learning rate (cosine schedule).")
    weight_decay: float = Field(ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(ge=0, lt=1, description="Fraction of steps spent warming the learning rate up.")
    group_by_length: bool = Field(
        description="Batch examples of similar length (the Trainer's 'group_by_length' sampling): less padding "
        "to compute, batches still drawn at random."
    )


class LlamaShape(Section):
    """Keys of transformers' LlamaConfig for a model built from scratch."""

    hidden_size: int = Field(ge=8, description="Width of the residual stream.")
    num_hidden_layers: int = Field(ge=1, description="Transformer blocks.")
    num_attention_heads: int = Field(ge=1, description="Query heads; must divide hidden_size.")
    num_key_value_heads: int = Field(
        ge=1, description="Key/value heads (grouped-query attention); must divide num_attention_heads."
    )
    intermediate_size: int = Field(ge=8, description="Width of the MLP.")
    max_position_embeddings: int = Field(ge=16, description="Context length in tokens.")
    tie_word_embeddings: bool = Field(description="Share the input embedding and the LM head.")

    @model_validator(mode="after")
    def _heads_divide(self) -> LlamaShape:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"num_attention_heads: {self.num_attention_heads} must divide hidden_size ({self.hidden_size})"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_key_value_heads: {self.num_key_value_heads} must divide num_attention_heads "
                f"({self.num_attention_heads})"
            )
        return self


class GenerationSettings(Section):
    """How a model writes an answer; converts to Hugging Face, OpenAI and onnxruntime-genai settings.

    Greedy unless do_sample; temperature and top_p apply to sampling only (an endpoint gets temperature 0
    when not sampling)."""

    max_new_tokens: int = Field(ge=1, description="Most tokens in one answer.")
    batch_size: int = Field(ge=1, description="Prompts generated together (local models).")
    do_sample: bool = Field(description="Sample (true) or decode greedily (false).")
    temperature: float = Field(gt=0, description="Sampling temperature (do_sample only).")
    top_p: float = Field(gt=0, le=1, description="Nucleus sampling mass (do_sample only).")

    def hf_kwargs(self) -> dict:
        """Keyword arguments of transformers' `generate()`."""
        sampling = {"temperature": self.temperature, "top_p": self.top_p} if self.do_sample else {}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample, **sampling}

    def openai_kwargs(self, seed: int | None = None, response_format: str | None = None) -> dict:
        """Body fields of an OpenAI chat-completions request (max_tokens, temperature, top_p, seed, response_format)."""
        kwargs = {
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature if self.do_sample else 0.0,
            "top_p": self.top_p,
        }
        if seed is not None:
            kwargs["seed"] = seed
        if response_format:
            kwargs["response_format"] = {"type": response_format}
        return kwargs

    def genai_search_options(self) -> dict:
        """onnxruntime-genai `GeneratorParams.set_search_options` arguments, less max_length (prompt-dependent)."""
        if not self.do_sample:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}

    @classmethod
    def greedy(cls, max_new_tokens: int, batch_size: int = 64) -> GenerationSettings:
        return cls(max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=False, temperature=1.0, top_p=1.0)

    @classmethod
    def at_temperature(cls, max_new_tokens: int, temperature: float, batch_size: int = 64) -> GenerationSettings:
        """Greedy at temperature 0, else sampling at that temperature (top_p 1)."""
        return cls(
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else 1.0,
            top_p=1.0,
        )


# --- sections, in pipeline order -----------------------------------------------------------------------


class Task(Section):
    dir: str = Field(description="Folder of the task spec (task.yaml and the answer JSON Schema).")


class Data(Section):
    labelled: str = Field(description="Human-labelled seed set: {id, message, label} per line.")
    prompts: str = Field(description="Unlabelled prompts for the teacher: {id, message} per line.")
    eval: str = Field(description="Held-out labelled eval set: {id, message, label} per line.")


class Bootstrap(Section):
    vocab_size: int = Field(
        ge=400,
        description="Tokenizer vocabulary in all: 100 digit-pair tokens, one token per answer key "
        "with its JSON punctuation, and byte-level BPE (must differ from every layer width).",
    )
    augment_copies: int = Field(
        ge=0,
        description="Extra copies of the labelled set in which values a message states "
        "verbatim (order id, product) are swapped for other records' values, "
        "so the model learns to copy them.",
    )
    restarts: int = Field(
        ge=0,
        description="Extra trainings from seed + 1, seed + 2, ... when the teacher copies too few of the values "
        "stated in augmented messages it did not train on.",
    )
    min_copy_accuracy: float = Field(
        ge=0, le=1, description="Least share of those stated values (order ids, products) the teacher must copy."
    )
    config: LlamaShape = Field(description="Shape of the teacher (a Llama).")
    train: Train = Field(description="Training of the teacher on the labelled set.")


class Prices(Section):
    prompt_per_million: float = Field(ge=0, description="Price of a million prompt (input) tokens.")
    completion_per_million: float = Field(ge=0, description="Price of a million completion (output) tokens.")


class OpenAIEndpoint(Section):
    base_url: str | None = Field(
        pattern=r"^https?://",
        description=(
            "Endpoint base URL, e.g. https://<resource>.openai.azure.com/openai/v1 (Azure AI Foundry), "
            "http://127.0.0.1:11434/v1 (Ollama). Written to records without user, password or query."
        ),
    )
    api_version: str | None = Field(
        description=(
            "Classic Azure OpenAI endpoints (/openai/deployments/<name>?api-version=...): the API version, quoted, "
            "e.g. '2024-10-21'; base_url is then https://<resource>.openai.azure.com. null for /v1 endpoints."
        )
    )
    auth: Literal["api_key", "entra_id", "none"] = Field(
        description=(
            "api_key: read from the environment variable api_key_env. entra_id: Microsoft Entra ID token via "
            "azure-identity's DefaultAzureCredential (az login, managed identity, workload identity). "
            "none: local servers."
        )
    )
    api_key_env: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description=("Name of the environment variable that holds the key (auth api_key); never the key."),
    )
    response_format: Literal["json_object"] | None = Field(
        description=(
            "json_object: ask the endpoint for JSON output (OpenAI JSON mode) where it supports it; null: plain text."
        )
    )
    prices: Prices = Field(description="USD per million tokens, for the cost estimate.")


class Teacher(Section):
    backend: Literal["bootstrap", "hf", "openai"] = Field(
        description=(
            "bootstrap: train a small teacher on the labelled set (offline default). hf: use an existing model, pinned "
            "by hash. openai: a model behind an OpenAI-compatible chat-completions endpoint (Azure AI Foundry, Azure "
            "OpenAI, OpenAI, Foundry Local, Ollama, vLLM, slmops serve)."
        )
    )
    model: str | None = Field(
        description=(
            "hf backend: a local Hugging Face model folder or a hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct). openai "
            "backend: the model or deployment name sent with each request."
        )
    )
    revision: str | None = Field(
        description="Hub revision (branch, tag or commit) of a hub id; null for the default branch."
    )
    openai: OpenAIEndpoint = Field(description="An OpenAI-compatible endpoint (backend openai).")
    bootstrap: Bootstrap = Field(description="The teacher trained here (backend bootstrap).")

    @model_validator(mode="after")
    def _backend_needs(self) -> Teacher:
        if self.backend in ("hf", "openai") and not self.model:
            raise ValueError(f"model: must name the model (a folder, hub id or deployment) with backend {self.backend}")
        if self.backend == "openai" and not self.openai.base_url:
            raise ValueError("openai.base_url: must be set with backend openai")
        return self


class Generate(Section):
    requests: int = Field(ge=1, description="Writing requests sent to the teacher.")
    prompts_per_request: int = Field(ge=1, description="New prompts asked for in each request.")
    examples: int = Field(ge=1, description="Seed examples shown in each request (drawn with the seed).")
    temperature: float = Field(ge=0, le=2, description="Sampling temperature for writing (variety).")
    max_tokens: int = Field(ge=1, description="Most tokens in one writing answer.")
    max_similarity: float = Field(
        ge=0,
        le=1,
        description=(
            "A new prompt whose character 4-gram Jaccard similarity with an existing or earlier one exceeds this is "
            "dropped as a near-duplicate."
        ),
    )


class Requests(Section):
    """How requests to an endpoint teacher are sent (transport: they do not change any answer)."""

    concurrency: int = Field(ge=1, le=512, description="Requests in flight at once.")
    timeout_s: float = Field(gt=0, description="Per-request timeout in seconds (a timed-out request is retried).")
    max_retries: int = Field(
        ge=0,
        le=20,
        description=(
            "Retries of one request on 408/409/429/5xx, timeouts, dropped connections and malformed bodies, with "
            "exponential back-off and jitter; Retry-After is honoured."
        ),
    )
    min_success_ratio: float = Field(
        ge=0,
        le=1,
        description=(
            "Least share of requests that must succeed; below it the stage fails, naming how many failed and why."
        ),
    )
    cache: str = Field(
        min_length=1,
        description=(
            "SQLite response cache (content-addressed; outside git and DVC). A rerun sends only the requests whose "
            "answers are not in it."
        ),
    )


class Synthesize(Section):
    mode: Literal["label", "generate_and_label"] = Field(
        description=(
            "label: the teacher answers data.prompts. generate_and_label: it first writes new prompts from seed "
            "examples "
            "of data.labelled (self-instruct), drops near-duplicates, then answers data.prompts and the new ones."
        )
    )
    limit: int | None = Field(ge=1, description="Answer only the first N prompts (null: all).")
    logprobs_top_k: int = Field(
        ge=0,
        le=64,
        description=("Store the teacher's top-k log-probs per answer token for logit distillation (0: off)."),
    )
    generation: GenerationSettings = Field(description="How the teacher answers.")
    generate: Generate = Field(description="Prompt writing (mode generate_and_label only).")
    requests: Requests = Field(description="Endpoint requests (backend openai only).")


class Student(Section):
    model: str | None = Field(
        description=(
            "Existing student (null: build from config): a local Hugging Face model folder or a hub id "
            "(e.g. Qwen/Qwen2.5-0.5B-Instruct)."
        )
    )
    revision: str | None = Field(
        description="Hub revision (branch, tag or commit) of a hub id; null for the default branch."
    )
    config: LlamaShape = Field(description="Shape of a student built from scratch (student.model null).")


class KD(Section):
    """The distillation loss: alpha * CE + (1 - alpha) * T^2 * KD (Hinton et al. 2015, arXiv:1503.02531)."""

    alpha: float = Field(ge=0, le=1, description="Weight of cross-entropy on the teacher's answer tokens (1: CE only).")
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = Field(description="KD divergence.")
    temperature: float = Field(gt=0, description="Softening temperature T for both distributions.")
    beta: float = Field(gt=0, lt=1, description="JSD mixing weight (jsd only).")
    on_tokenizer_mismatch: Literal["error", "ce_only"] = Field(
        description=("When student and teacher tokenizers differ: error, or train on cross-entropy only.")
    )


class Distill(Section):
    train: Train = Field(description="Training of the student on the teacher's answers.")
    kd: KD = Field(description="The knowledge-distillation loss.")


class Training(Section):
    """How distill and finetune run: processes (data parallel under torchrun) and checkpoints for preemption.

    A stage's `train.batch_size` stays the examples per optimisation step, split over processes and accumulation
    steps, so changing them changes memory and speed, not what is learned (README: "Training on several
    processes / GPUs")."""

    processes: int | Literal["auto"] = Field(
        description=(
            "Data-parallel processes on this machine (torchrun; gloo on CPU, nccl with one CUDA device each). "
            "auto: one per visible CUDA device, 1 without CUDA."
        )
    )
    gradient_accumulation_steps: int = Field(
        ge=1, description="Micro-batches per optimisation step in each process (less memory, same update)."
    )
    checkpoint_steps: int = Field(
        ge=0,
        description=(
            "Save a resumable checkpoint every N optimisation steps under .slmops/checkpoints/ (0: none); a rerun "
            "after a kill resumes from the last one, and a finished run removes them."
        ),
    )

    @field_validator("processes")
    @classmethod
    def _at_least_one(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError(f"{value} processes; give 1 or more, or auto")
        return value


class Lora(Section):
    r: int = Field(ge=1, description="Rank of the update matrices.")
    alpha: float = Field(gt=0, description="Scaling numerator (update scaled by alpha / r).")
    dropout: float = Field(ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: Literal["all-linear"] | list[str] = Field(
        description=(
            "all-linear (peft: every linear layer but the output layer; fits every family, e.g. Phi-3's fused "
            "qkv_proj and gate_up_proj), or the names of the layers that get an adapter (e.g. q_proj, v_proj)."
        )
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _all_linear_or_names(cls, value):
        if isinstance(value, str) and value != ALL_LINEAR:
            raise ValueError(f"'{value}' is neither all-linear nor a list of module names")
        if isinstance(value, list):
            if not value:
                raise ValueError("empty; list at least one module, or write all-linear")
            if ALL_LINEAR in value:
                raise ValueError("all-linear stands alone, not in a list: target_modules: all-linear")
            if any(isinstance(name, str) and not name.strip() for name in value):
                raise ValueError("an empty module name; name a layer such as q_proj, or write all-linear")
            if len(set(value)) != len(value):
                raise ValueError("lists a module twice")
        return value


class Finetune(Section):
    method: Literal["lora", "qlora", "none"] = Field(
        description=("lora (peft), qlora (4-bit base, needs CUDA and bitsandbytes), or none (all weights, no adapter).")
    )
    lora: Lora = Field(description="The LoRA adapter (method lora or qlora).")
    train: Train = Field(description="Training on the human-labelled set.")


class Parity(Section):
    prompts: int = Field(ge=1, description="Eval prompts compared.")
    max_abs_logit_diff: float = Field(
        gt=0, description=("fp32 exports: largest allowed absolute logit difference at any answer position.")
    )
    min_greedy_agreement: float = Field(
        ge=0,
        le=1,
        description=(
            "Quantized exports (int4, int8, fp16): least share of answer positions whose greedy next token agrees "
            "with PyTorch."
        ),
    )


class Quantize(Section):
    engine: Literal["builder", "olive"] = Field(
        description=(
            "builder: the onnxruntime-genai model builder; olive: an Olive workflow generated from these params and "
            "saved as models/onnx/olive_config.json."
        )
    )
    precision: Literal["int4", "int8", "fp16", "fp32"] = Field(description="Weight precision of the exported model.")
    execution_provider: Literal["cpu", "cuda", "dml"] = Field(
        description=("Execution provider the model is built for (cuda and dml need a GPU runner).")
    )
    block_size: Literal[16, 32, 64, 128, 256] = Field(description="Weights per quantization block (int4, int8).")
    symmetric: bool = Field(
        description="Symmetric (signed) or asymmetric (unsigned, with zero points) weight quantization."
    )
    accuracy_level: int = Field(
        ge=1, le=4, description=("Compute type of quantized MatMuls: 1 fp32, 2 fp16, 3 bf16, 4 int8.")
    )
    embeddings: bool = Field(
        description=(
            "int4 only: quantize the embedding table as well (GatherBlockQuantized), shared with the LM head when the "
            "model ties them; small models are mostly embedding."
        )
    )
    intra_op_num_threads: int = Field(
        ge=0,
        le=1024,
        description=(
            "Threads onnxruntime runs each operator on, written into the export's genai_config.json "
            "(session_options), so the shipped model uses them wherever it runs; 0: one per physical core "
            "(onnxruntime's default). Left unset, onnxruntime-genai takes half the logical CPUs: on a machine "
            "without SMT, half the cores."
        ),
    )
    parity: Parity = Field(description="The logit-parity check of the export against PyTorch.")

    @property
    def build_precision(self) -> str:
        """The builder has no int8: int8 is an fp32 build quantized afterwards."""
        return "fp32" if self.precision == "int8" else self.precision


class Speed(Section):
    warmup: int = Field(ge=0, description="Untimed requests before timing.")
    repeats: int = Field(ge=1, description="Timed requests (eval prompts) per variant.")


class Evaluate(Section):
    limit: int | None = Field(ge=1, description="Score only the first N eval records (null: all).")
    generation: GenerationSettings = Field(description="How every variant answers the eval set.")
    speed: Speed = Field(description="Latency, time to first token, decode rate and memory, one request at a time.")


class Verify(Section):
    max_output_tokens: int = Field(
        ge=1, description=("Most tokens in the verification answer; prompt plus this must fit the model's context.")
    )


class Package(Section):
    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
        description=(
            "Model name: the folder name and the Foundry Local model Name (lower case letters, digits, '.', '_', '-')."
        ),
    )
    version: int = Field(ge=1, description="Model version, registered as <name>:<version>.")
    verify: Verify = Field(description="Verification of the package in onnxruntime-genai and Foundry Local.")


class Gate(Section):
    """Exactly one of max_regression (absolute, in the metric's units: 0.01 is one point of a rate) or
    max_regression_pct (percent of the base value); on a per-record share (exact_match, schema_valid,
    json_valid), optionally the significance level a regression must also reach to fail."""

    max_regression: float | None = Field(
        default=None, ge=0, description=("Largest allowed worsening, in the metric's units.")
    )
    max_regression_pct: float | None = Field(
        default=None, ge=0, description=("Largest allowed worsening, in percent of the base value.")
    )
    significance: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description=(
            "Per-record shares only (exact_match, schema_valid, json_valid): the gate fails only when the "
            "regression is larger than allowed and significant at this level (McNemar's exact test, one-sided, "
            "on the eval records whose answer flipped). null: 0.05."
        ),
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Gate:
        if (self.max_regression is None) == (self.max_regression_pct is None):
            raise ValueError("give exactly one of max_regression, max_regression_pct")
        return self


class Params(Section):
    """Every knob of the pipeline, grouped by stage. Validated by `slmops validate` and by every stage before it
    does any work."""

    model_config = ConfigDict(title="SLMOps pipeline params")

    seed: int = Field(
        ge=0, le=2**32 - 1, description="Seed for every random choice (data order, initialisation, sampling)."
    )
    task: Task = Field(description="The task.")
    data: Data = Field(description="Committed data files (JSONL).")
    teacher: Teacher = Field(description="The teacher model.")
    synthesize: Synthesize = Field(description="The teacher answers the unlabelled prompts.")
    student: Student = Field(
        description="The student model: an existing model, or one built from `config` with the teacher's tokenizer."
    )
    distill: Distill = Field(description="Train the student on the teacher's answers.")
    finetune: Finetune = Field(description="Fine-tune the student on the human-labelled set.")
    training: Training = Field(description="Processes and checkpoints of the distill and finetune training runs.")
    quantize: Quantize = Field(description="Export the fine-tuned model to ONNX for onnxruntime-genai and quantize it.")
    evaluate: Evaluate = Field(
        description="Score every model variant on the held-out eval set: accuracy, speed and memory."
    )
    package: Package = Field(description="Build and verify the Foundry Local model folder models/foundry/<name>.")
    gates: dict[Literal[GATE_KEYS], Gate] = Field(
        description=(
            "Pull-request gates for `slmops report`: per headline metric, the largest regression of head against base "
            "that passes. A metric missing at base (first run) passes as new."
        )
    )

    @field_validator("gates")
    @classmethod
    def _significance_on_per_record_shares(cls, gates: dict) -> dict:
        for key, gate in gates.items():
            if gate.significance is not None and key not in PER_RECORD_KEYS:
                raise ValueError(
                    f"{key}.significance: only a per-record share ({', '.join(PER_RECORD_KEYS)}) is tested "
                    "for significance; remove it"
                )
        return gates


def json_schema() -> str:
    """params.schema.json's text (JSON Schema 2020-12), generated from `Params`."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **Params.model_json_schema()}
    return json.dumps(schema, indent=2) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(json_schema())
    print(f"wrote {SCHEMA_PATH}")

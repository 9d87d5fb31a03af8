"""Chat with an onnxruntime-genai model folder: answers (greedy or sampled), streamed tokens, per-position logits.

Imports no torch, so a process that only serves the ONNX model stays small (evaluate measures its memory).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime_genai as og

from slmops.core.errors import InputError


@dataclass
class TimedAnswer:
    text: str
    tokens: int
    seconds: float
    first_token_seconds: float
    finished: bool  # the model wrote an end token (not cut at max_new_tokens or the context length)


class OnnxChatModel:
    """A genai model folder (genai_config.json, model.onnx, tokenizer, chat template)."""

    def __init__(self, folder: str | Path, execution_provider: str = "cpu"):
        folder = Path(folder)
        if not (folder / "genai_config.json").is_file():
            raise InputError(f"{folder}: not an onnxruntime-genai model folder (no genai_config.json)")
        config = og.Config(str(folder))
        config.clear_providers()
        if execution_provider != "cpu":
            config.append_provider(execution_provider)
        self.folder = folder
        self.model = og.Model(config)
        self.tokenizer = og.Tokenizer(self.model)
        self.context_length = json.loads((folder / "genai_config.json").read_text())["model"]["context_length"]

    def prompt_tokens(self, messages: list[dict]) -> np.ndarray:
        """The chat rendered by the folder's chat template and encoded; InputError when the template fails on it
        (a syntax error, or a template that refuses the chat, e.g. a system message)."""
        try:
            prompt = self.tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
        except RuntimeError as err:  # onnxruntime-genai reports template errors as RuntimeError
            roles = ", ".join(m["role"] for m in messages)
            raise InputError(f"{self.folder}: the chat template fails on a chat of {roles}: {err}") from None
        return self.tokenizer.encode(prompt)

    def stream(
        self,
        messages: list[dict],
        max_new_tokens: int,
        search_options: dict | None = None,
        prompt: np.ndarray | None = None,
    ) -> Iterator[str]:
        """The answer, one decoded piece per generated token, at most max_new_tokens (and within the context).
        Greedy unless `search_options` (GenerationSettings.genai_search_options()) say to sample; `prompt`: the
        chat's tokens when already encoded."""
        prompt = self.prompt_tokens(messages) if prompt is None else prompt
        params = og.GeneratorParams(self.model)
        params.set_search_options(
            max_length=min(len(prompt) + max_new_tokens, self.context_length),
            **(search_options or {"do_sample": False}),
        )
        generator = og.Generator(self.model, params)
        generator.append_tokens(prompt)
        decoder = self.tokenizer.create_stream()
        eos = set(self.tokenizer.eos_token_ids)
        while not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in eos:
                break
            yield decoder.decode(token)

    def answer(self, messages: list[dict], max_new_tokens: int, search_options: dict | None = None) -> TimedAnswer:
        """The whole answer, with its token count, wall time and time to first token (seconds), and whether it
        ended with an end token."""
        start = time.perf_counter()
        prompt = self.prompt_tokens(messages)
        first = None
        pieces = []
        for piece in self.stream(messages, max_new_tokens, search_options, prompt):
            first = first if first is not None else time.perf_counter() - start
            pieces.append(piece)
        seconds = time.perf_counter() - start
        # stream stops at an end token (not yielded) or when no room is left: a full allowance means cut
        room = min(len(prompt) + max_new_tokens, self.context_length) - len(prompt)
        return TimedAnswer(
            "".join(pieces).strip(), len(pieces), seconds, first if first is not None else seconds, len(pieces) < room
        )

    def next_token_logits(self, prompt: list[int], continuation: list[int]) -> np.ndarray:
        """Logits predicting each token of `continuation` (teacher-forced), shape (len(continuation), vocab)."""
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt) + len(continuation) + 1)
        generator = og.Generator(self.model, params)
        generator.append_tokens(np.asarray(prompt, dtype=np.int32))
        rows = [generator.get_logits()[0, -1].copy()]
        for token in continuation[:-1]:
            generator.append_tokens(np.asarray([token], dtype=np.int32))
            rows.append(generator.get_logits()[0, -1].copy())
        return np.stack(rows).astype(np.float32)

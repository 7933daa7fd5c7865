"""The RAG wrapper around a model: numbered passages in the prompt, citations parsed back, the answer returned
with its sources; text and image questions, text-only and multimodal models."""

from __future__ import annotations

import pytest
from rag_helpers import corpus_documents, prompt_passages, tiny_lm, topic_queries

from mmadapt.errors import DataError
from mmadapt.generate import generate_batch
from mmadapt.rag.augment import Answer, PromptConfig, RAGPipeline, Source, build_prompt, cited_numbers, messages_for
from mmadapt.rag.meta import Hit
from mmadapt.rag.retrieve import RetrieveConfig, Retriever


def hit(n: int, text: str = "", **fields) -> Hit:
    return Hit(f"doc-{n}#0", 1.0 / n, text or f"passage {n}", fields.pop("source", f"doc-{n}.txt"), f"doc-{n}", **fields)


@pytest.fixture(scope="module")
def index(build_index):
    return build_index(corpus_documents())


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    queries, _ = topic_queries()
    texts = [d.text for d in corpus_documents()] + queries + [PromptConfig().instruction, "Question:"]
    return tiny_lm(texts, tmp_path_factory.mktemp("text_lm"))


def colour_index(tiny_clip, tmp_path):
    """An open_clip index of one image per colour (`images/COLOUR-1.png`)."""
    from mmadapt.rag.embed import EmbedderConfig
    from mmadapt.rag.ingest import ingest
    from mmadapt.rag.store import RagConfig, RagIndex

    folder = tmp_path / "images"
    folder.mkdir()
    for colour in tiny_clip.colours:
        tiny_clip.image(folder, colour, seed=1)
    config = RagConfig(embedder=EmbedderConfig(type="open_clip", name=tiny_clip.name))
    return RagIndex.build(tmp_path / "index", ingest([folder]).documents, config)[0]


def test_prompt_numbers_passages_and_leaves_blank_parts_out():
    hits = [hit(1, "The violin has   four\nstrings."), hit(2, page=3, source="book.pdf")]
    prompt = build_prompt("which instrument?", hits, PromptConfig())
    assert prompt.splitlines() == [PromptConfig().instruction, "[1] The violin has four strings.", "[2] passage 2",
                                   "Question: which instrument?"]
    cited = PromptConfig(passage="[{n}] {text} ({citation})", instruction="", question="Q: {question}")
    assert build_prompt("q", hits, cited, media_placeholder="<image>").splitlines() == [
        "<image>", "[1] The violin has four strings. (doc-1.txt)", "[2] passage 2 (book.pdf, page 3)", "Q: q"]
    # no passages: no instruction either, and `no_passages` stands in for them when set
    assert build_prompt("q", [], PromptConfig()) == "Question: q"
    assert build_prompt("q", [], PromptConfig(no_passages="No passages.")) == "No passages.\nQuestion: q"
    image = Hit("img#0", 0.5, "", "photos/cat.png", "img", modality="image")
    assert prompt_passages(build_prompt("q", [image], PromptConfig())) == ["(image photos/cat.png)"]


def test_long_passages_are_cut_at_a_word():
    text = " ".join(f"word{i}" for i in range(100))
    [shown] = prompt_passages(build_prompt("q", [hit(1, text)], PromptConfig(max_passage_chars=40)))
    assert shown.endswith(" ...") and len(shown) <= 44 and text.startswith(shown[:-4])
    assert shown[:-4].split()[-1] in text.split()  # no word cut in half


def test_system_message_comes_first():
    messages = messages_for("q", [hit(1)], PromptConfig(system="Be brief."))
    assert [m["role"] for m in messages] == ["system", "user"] and messages[0]["content"] == "Be brief."
    assert [m["role"] for m in messages_for("q", [hit(1)], PromptConfig())] == ["user"]


def test_citations_are_parsed_once_in_order_and_only_for_given_passages():
    assert cited_numbers("see [2], then [1] and [2] again; [7] and [0] do not exist", 3) == [2, 1]
    assert cited_numbers("no citation", 3) == []
    sources = [Source(n, f"c{n}", "s", None, 0.0, "t") for n in (1, 2, 3)]
    answer = Answer("x [3]", sources, cited_numbers("x [3]", 3))
    assert [s.chunk_id for s in answer.cited_sources()] == ["c3"]


def test_pipeline_answers_from_the_retrieved_passages_with_sources(index, text_model):
    queries, gold = topic_queries()
    retriever = Retriever(index, RetrieveConfig(k=2))
    pipeline = RAGPipeline(text_model, retriever, max_new_tokens=4)
    answers = pipeline.ask_batch(queries[:3])
    for question, answer, expected in zip(queries, answers, gold):
        hits = retriever.retrieve(question)
        assert [s.n for s in answer.sources] == [1, 2]
        assert [s.chunk_id for s in answer.sources] == [h.chunk_id for h in hits] and answer.sources[0].chunk_id == expected
        assert [s.text for s in answer.sources] == [h.text for h in hits]
        # the model was given exactly these passages, numbered, and generated greedily from them
        messages = messages_for(question, hits, pipeline.prompt)
        assert prompt_passages(messages[-1]["content"]) == [h.text for h in hits]
        assert answer.text == generate_batch(text_model, [(messages, {})], max_new_tokens=4)[0]
        assert answer.cited == cited_numbers(answer.text, 2)
    bare = pipeline.ask(queries[0], retrieve=False)
    assert bare.sources == [] and bare.cited == []
    assert bare.text == generate_batch(text_model, [(messages_for(queries[0], [], pipeline.prompt), {})], max_new_tokens=4)[0]
    car = pipeline.ask(queries[0], filters={"topic": "car"}, k=3)
    assert len(car.sources) == 3 and all(s.source == "manual.txt" for s in car.sources)


def test_an_image_is_the_query_and_part_of_a_multimodal_prompt(tiny_clip, tmp_path):
    index = colour_index(tiny_clip, tmp_path)
    model = tiny_lm([PromptConfig().instruction, "Question: what colour is this picture ( image )"],
                    tmp_path / "vlm", image=True)
    pipeline = RAGPipeline(model, Retriever(index, RetrieveConfig(k=2)), max_new_tokens=3)
    query = tiny_clip.image(tmp_path, "green", seed=50)
    answer = pipeline.ask("", image=query)
    assert answer.sources[0].source.endswith("green-1.png")  # the image found its own colour
    hits = pipeline.retriever.retrieve(image=query)
    messages = messages_for("", hits, pipeline.prompt, "<image>")
    assert messages[-1]["content"].startswith("<image>\n")  # the model sees the query image, then the passages
    assert answer.text == generate_batch(model, [(messages, {"image": [query]})], max_new_tokens=3)[0]
    # a question that places the image itself gets no second placeholder (else: 2 placeholders, 1 image)
    placed = pipeline.ask("what colour is <image> ?", image=query)
    assert [s.chunk_id for s in placed.sources] == [s.chunk_id for s in answer.sources]


def test_text_only_model_uses_an_image_for_retrieval_only(tiny_clip, tmp_path, text_model):
    index = colour_index(tiny_clip, tmp_path)
    pipeline = RAGPipeline(text_model, Retriever(index, RetrieveConfig(k=1)), max_new_tokens=2)
    query = tiny_clip.image(tmp_path, "red", seed=7)
    answer = pipeline.ask("a red picture", image=query)
    assert answer.sources[0].source.endswith("red-1.png")
    hits = pipeline.retriever.retrieve("a red picture", image=query)
    assert answer.text == generate_batch(text_model, [(messages_for("a red picture", hits, pipeline.prompt), {})],
                                         max_new_tokens=2)[0]


def test_pipeline_input_errors(index, text_model):
    pipeline = RAGPipeline(text_model, Retriever(index))
    with pytest.raises(DataError, match="2 questions but 1 images"):
        pipeline.ask_batch(["a", "b"], images=["x.png"])
    with pytest.raises(DataError, match="a query needs text, an image, or both"):
        pipeline.ask("   ")

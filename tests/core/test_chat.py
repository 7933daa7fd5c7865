"""`mmadapt chat`: one model load, turns that remember the conversation, media by path, errors that do not end it."""

import io
import sys


def test_chat_keeps_the_conversation_and_survives_bad_input(make_model_config, image_files, tmp_path, monkeypatch, capsys):
    from mmadapt.cli import main
    from mmadapt.model import MultimodalLM

    MultimodalLM.from_config(make_model_config("llama")).save_pretrained(tmp_path / "model")
    script = "\n".join([f"/image {image_files[0]}", "what colour is the shape ?", "/image /nowhere.png",
                        "/bogus", "where is it ?", "/reset", "hello", "/quit", "never read"]) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert main(["chat", str(tmp_path / "model"), "--system", "you are a helpful assistant", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "(image attached to your next message)" in out
    assert "error: /image: file not found" in out and "unknown command /bogus" in out
    assert "(conversation reset)" in out


def test_conversation_messages_carry_history_system_and_media(image_files):
    from mmadapt.chat import Conversation, chat_loop

    class Echo:  # an engine that answers with the number of messages it was sent
        def __init__(self):
            self.seen = []

        def stream(self, messages, params):
            self.seen.append(messages)
            yield str(len(messages))

    engine, written = Echo(), []
    conversation = chat_loop(engine, None, [f"/image {image_files[0]}", "first", "second"], written.append, system="sys")
    first, second = engine.seen
    assert [m["role"] for m in first] == ["system", "user"] and first[1]["content"][0]["type"] == "image_url"
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[2]["content"] == "2" and second[3]["content"] == "second"
    assert isinstance(conversation, Conversation) and len(conversation.turns) == 4

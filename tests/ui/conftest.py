"""UI fixtures: the web app served by uvicorn in a thread on a free 127.0.0.1 port, and headless Debian chromium
driven by Playwright (pointed at /usr/bin/chromium: nothing downloads a browser)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.serve.conftest import index_dir, model_dir  # noqa: F401  (the serve fixtures: tiny VLM + MiniLM index)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install -y chromium)")


@pytest.fixture(scope="session")
def ui_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ui-work")


@pytest.fixture(scope="session")
def ui_url(ui_workdir) -> Iterator[str]:
    import uvicorn

    from mmadapt.ui.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(ui_workdir), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    pw_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    with pw_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser, ui_url):
    p = browser.new_page(viewport={"width": 1000, "height": 640})
    p.goto(ui_url)
    yield p
    p.close()

"""The bundled web chat in a real browser (Debian's Chromium via Playwright),
served by a real built executable, with every request to any other host refused."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import ROOT, Served, run_exe

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = ROOT / "test-artifacts"
URL_RE = re.compile(
    r"(?i)\b(?:https?|wss?|ftp):"  # absolute URLs
    r"|(?<![\w:/])//[\w-]+(?:\.[\w-]+)+"  # protocol-relative URLs
    r"|@import|url\(\s*['\"]?(?!data:|/)"  # CSS imports and non-local url()
)


def test_page_sources_name_no_outside_host():
    for bad in ('src="https://cdn.example/x.js"', "fetch('//evil.example/x')", "@import 'a.css'",
                "background: url(fonts.example/f.woff)"):  # fmt: skip
        assert URL_RE.search(bad), bad  # the scanner itself catches what it must
    for name in ("index.html", "chat.js", "chat.css"):
        text = (ROOT / "templates" / name).read_text()
        assert not URL_RE.search(text), f"{name}: {URL_RE.search(text).group(0)!r}"
        assert "innerHTML" not in text and "eval(" not in text and "new Function" not in text
        assert not re.search(r"<[^>]+\son\w+\s*=", text), f"{name} has an inline handler"


@pytest.fixture
def server(bundle):
    """A fresh server per test: a KV cache reused from an earlier test would change how
    the prompt is batched, and with it the last bits of the logits."""
    s = Served(bundle, "--temp", "0")
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture
def page(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: run ./install.sh (it installs Debian's chromium)")
    own = urlsplit(server.url).netloc
    refused, errors = [], []
    short_tmp = tempfile.mkdtemp(prefix="lb-", dir="/tmp")  # Chromium's socket paths must be short
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS,
                                     env={**os.environ, "TMPDIR": short_tmp})  # fmt: skip
        ctx = browser.new_context(viewport={"width": 1100, "height": 800})

        def gate(route):
            if urlsplit(route.request.url).netloc == own:
                route.continue_()
            else:
                refused.append(route.request.url)
                route.abort()

        ctx.route("**/*", gate)
        pg = ctx.new_page()
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(server.url + "/")
        pg.refused, pg.errors = refused, errors
        yield pg
        browser.close()
    shutil.rmtree(short_tmp, ignore_errors=True)
    assert refused == [], f"the page tried to reach other hosts: {refused}"


def _reply_text(page) -> str:
    return page.evaluate(
        "() => { const m = document.querySelectorAll('#messages .msg.assistant .content');"
        " return m.length ? m[m.length - 1].textContent : ''; }"
    )


def _busy(page) -> bool:
    return page.evaluate("() => document.body.classList.contains('busy')")


def _wait(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_chat_streams_and_stops(page, server, bundle):
    _wait(lambda: page.text_content("#model-name") == "stories260K")
    page.fill("#prompt", "Once upon a time")
    page.keyboard.press("Enter")
    _wait(lambda: len(_reply_text(page)) > 0)
    lengths = set()
    _wait(lambda: lengths.add(len(_reply_text(page))) or len(lengths) >= 3)  # text grows as it streams
    assert _busy(page), "not busy while streaming"
    page.click("#stop")
    _wait(lambda: not _busy(page))
    stopped = _reply_text(page)
    time.sleep(0.5)
    assert _reply_text(page) == stopped, "text kept arriving after Stop"
    # What was shown is the start of the model's greedy answer, and only the start.
    full = run_exe(bundle, "-p", "Once upon a time", "-n", "400", "--temp", "0").stdout
    # (compared without whitespace: the page renders paragraphs as elements, not newlines)
    assert "".join(full.split()).startswith("".join(stopped.split())), (stopped, full)
    assert len(stopped) < len(full)
    _wait(lambda: page.evaluate("() => fetch('/health').then(r => r.json())")["busy"] is False)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webchat.png"))
    assert page.errors == [], page.errors


def _ask_and_stop(page, text: str, min_chars: int) -> None:
    """Send ``text`` from the keyboard, let the reply stream a little, stop it with Escape."""
    _wait(lambda: page.text_content("#model-name") == "stories260K")
    page.focus("#prompt")
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    _wait(lambda: len(_reply_text(page)) > min_chars)
    page.keyboard.press("Escape")
    _wait(lambda: not _busy(page))


def test_conversation_survives_reload_and_new_chat(page):
    _ask_and_stop(page, "One day", 20)
    page.reload()
    _wait(lambda: page.locator("#messages .msg.user").count() == 1)
    assert page.text_content("#messages .msg.user").strip().startswith("One day")
    assert page.locator("#conversations .conversation").count() >= 1
    page.click("#new-chat")
    _wait(lambda: page.locator("#messages .msg.user").count() == 0)


def test_regenerate_and_edit_the_last_turn(page):
    _ask_and_stop(page, "The cat", 40)
    page.click("#messages .msg.assistant .regenerate")
    _wait(lambda: _busy(page) or len(_reply_text(page)) > 0)
    _wait(lambda: len(_reply_text(page)) > 40)
    page.keyboard.press("Escape")
    _wait(lambda: not _busy(page))
    assert page.locator("#messages .msg.assistant").count() == 1  # replaced, not added
    page.click("#messages .msg.user .edit")
    _wait(lambda: page.locator("#messages .msg.user").count() == 0)
    assert page.input_value("#prompt") == "The cat"


def test_phone_sized_screen_and_keyboard(page):
    page.set_viewport_size({"width": 375, "height": 700})
    _wait(lambda: page.text_content("#model-name") == "stories260K")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375  # no sideways scroll
    assert page.is_visible("#prompt") and page.is_visible("#send")
    _ask_and_stop(page, "One day", 10)  # keyboard alone: type, send, stop
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webchat-phone.png"))

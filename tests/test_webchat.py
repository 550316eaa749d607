"""The bundled web chat in a real browser (Debian's Chromium via Playwright),
served by a real built executable, with every request to any other host refused."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest

from conftest import ROOT, Served, run_exe

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = ROOT / "test-artifacts"
CHAT = "/v1/chat/completions"
URL_RE = re.compile(
    r"(?i)\b(?:https?|wss?|ftp):"  # absolute URLs
    r"|(?<![\w:/])//[\w-]+(?:\.[\w-]+)+"  # protocol-relative URLs
    r"|@import|url\(\s*['\"]?(?!data:|/)"  # CSS imports and non-local url()
)


def test_page_sources_name_no_outside_host():
    for bad in ('src="https://cdn.example/x.js"', "fetch('//evil.example/x')", "@import 'a.css'",
                "background: url(fonts.example/f.woff)"):  # fmt: skip
        assert URL_RE.search(bad), bad  # the scanner itself catches what it must
    names = sorted(p.name for p in (ROOT / "templates").iterdir() if p.is_file())
    assert {"index.html", "chat.js", "chat.css", "markdown.js"} <= set(names), names
    for name in names:  # every file the server serves, ES modules included
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


def _record_chat(page) -> tuple[list, list]:
    """Records the JSON bodies of the page's chat requests, and the statuses of the answers."""
    bodies, statuses = [], []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith(CHAT) else None)
    page.on("response", lambda r: statuses.append(r.status) if r.url.endswith(CHAT) else None)
    return bodies, statuses


def test_message_sent_before_props_load_is_answered(page):
    """A message sent while /props is still on its way waits for it and names the server's
    model (it once went out as model "default", and the server answered 404)."""
    held = []
    page.route("**/props", lambda route: held.append(route))  # held until released below
    bodies, statuses = _record_chat(page)
    page.reload()
    _wait(lambda: page.evaluate("() => true") and len(held) >= 1)
    assert page.text_content("#model-name") == "Loading…"
    page.fill("#prompt", "Once upon a time")
    page.keyboard.press("Enter")
    page.wait_for_timeout(1000)  # /props held for a second
    assert bodies == [], f"sent before /props arrived: {bodies}"
    assert _busy(page), "the message was not taken"
    for route in held:
        route.continue_()
    _wait(lambda: len(_reply_text(page)) > 20)
    page.keyboard.press("Escape")
    _wait(lambda: not _busy(page))
    assert page.text_content("#model-name") == "stories260K"
    assert [b.get("model") for b in bodies] == ["stories260K"], bodies
    assert statuses == [200], statuses
    assert page.locator("#messages .msg.error").count() == 0, page.text_content("#messages .msg.error")
    assert page.errors == [], page.errors


def test_stop_while_waiting_for_props(page):
    """Stop works while a message waits for /props: nothing is sent, and Retry sends it later."""
    held = []
    page.route("**/props", lambda route: held.append(route))
    bodies, _ = _record_chat(page)
    page.reload()
    _wait(lambda: page.evaluate("() => true") and len(held) >= 1)
    page.fill("#prompt", "Once upon a time")
    page.keyboard.press("Enter")
    page.wait_for_timeout(300)
    assert _busy(page)
    page.keyboard.press("Escape")
    _wait(lambda: not _busy(page))
    assert bodies == []
    assert page.locator("#messages .retry").count() == 1
    for route in held:
        route.continue_()
    _wait(lambda: page.text_content("#model-name") == "stories260K")
    page.click("#messages .retry")
    _wait(lambda: len(_reply_text(page)) > 10)
    page.keyboard.press("Escape")
    _wait(lambda: not _busy(page))
    assert [b.get("model") for b in bodies] == ["stories260K"], bodies
    assert page.errors == [], page.errors


MARKDOWN_REPLY = (
    "## Title\n\nSome **bold** text and `code`, see [the docs](https://example.com/docs).\n\n"
    "- one\n- two\n\n```python\nprint('<b>hi</b>')\n```\n\n<script>alert(1)</script>\n"
)


def test_markdown_reply_renders_as_elements(page):
    """A reply with Markdown (streamed in small pieces, by a route standing in for the
    server) shows as elements, as a full render of the text would, with no HTML or links."""
    pieces = [MARKDOWN_REPLY[i : i + 5] for i in range(0, len(MARKDOWN_REPLY), 5)]
    events = [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    page.route(
        f"**{CHAT}",
        lambda route: route.fulfill(status=200, content_type="text/event-stream", body=sse),
    )
    _wait(lambda: page.text_content("#model-name") == "stories260K")
    page.fill("#prompt", "Show me some Markdown")
    page.keyboard.press("Enter")
    _wait(lambda: not _busy(page) and page.locator("#messages .msg.assistant .meta").count() == 1)
    content = "#messages .msg.assistant .content"
    assert page.text_content(f"{content} h2") == "Title"
    assert page.text_content(f"{content} strong") == "bold"
    assert page.locator(f"{content} li").all_text_contents() == ["one", "two"]
    assert page.text_content(f"{content} .code-block pre code") == "print('<b>hi</b>')"
    assert page.text_content(f"{content} .code-head span") == "python"
    assert "the docs (https://example.com/docs)" in page.text_content(f"{content} p")
    assert page.locator(f"{content} a, {content} script, {content} b").count() == 0
    same = page.evaluate(
        """async (text) => {
          const { renderMarkdown } = await import('/markdown-dom.js');
          const shown = document.querySelector('#messages .msg.assistant .content');
          const full = document.createElement('div');
          full.className = 'content';
          return shown.isEqualNode(renderMarkdown(full, text));
        }""",
        MARKDOWN_REPLY,
    )
    assert same, "the streamed reply differs from a full render of its text"
    assert page.errors == [], page.errors


def _props_route(page, server, **override):
    """Answers /props as the server does, with ``override`` applied."""

    def handle(route):
        real = json.loads(urlopen(server.url + "/props").read())
        route.fulfill(status=200, content_type="application/json", body=json.dumps({**real, **override}))

    page.route("**/props", handle)


def test_props_shape_the_page(page, server):
    """Greeting, default system prompt and the plain-completion note come from /props,
    and the system prompt goes out with the first message."""
    _props_route(page, server, greeting="Hello, I am **tiny**.", system_prompt="Be brief.", plain_chat=True)
    bodies, _ = _record_chat(page)
    page.reload()
    _wait(lambda: page.text_content("#model-name") == "stories260K")
    assert page.text_content("#messages .msg.greeting strong") == "tiny"
    assert page.input_value("#system-prompt") == "Be brief."
    assert page.text_content("#sys-preview") == "\u00b7 Be brief."
    assert page.is_visible("#template-note")
    _ask_and_stop(page, "Once upon a time", 10)
    assert bodies[0]["messages"][0] == {"role": "system", "content": "Be brief."}, bodies
    assert page.locator("#messages .msg.greeting").count() == 0
    assert page.errors == [], page.errors


def test_api_key_form(page, server):
    """A 401 from /props asks for a key; the key is then sent, and the form goes away."""
    seen = []

    def handle(route):
        seen.append(route.request.headers.get("authorization"))
        if route.request.headers.get("authorization") != "Bearer sesame":
            route.fulfill(status=401, content_type="application/json", body='{"error": {"message": "no"}}')
        else:
            route.continue_()

    page.route("**/props", handle)
    page.reload()
    _wait(lambda: page.is_visible("#key-form"))
    assert page.text_content("#key-msg") == "This server requires an API key."
    assert page.evaluate("() => document.activeElement.id") == "api-key"
    page.keyboard.type("sesame")
    page.keyboard.press("Enter")
    _wait(lambda: page.text_content("#model-name") == "stories260K")
    assert page.is_hidden("#key-form")
    assert seen[-1] == "Bearer sesame", seen
    # This tab only, unless asked to remember it.
    assert page.evaluate("() => sessionStorage.getItem('llamabundle.apiKey')") == "sesame"
    assert page.evaluate("() => localStorage.getItem('llamabundle.apiKey')") is None
    _ask_and_stop(page, "Once upon a time", 10)  # the chat request carries the key too
    assert page.locator("#messages .msg.error").count() == 0
    page.evaluate("() => sessionStorage.clear()")
    page.reload()
    _wait(lambda: page.is_visible("#key-form"))
    page.fill("#api-key", "sesame")
    page.check("#key-remember")
    page.press("#api-key", "Enter")
    _wait(lambda: page.text_content("#model-name") == "stories260K")
    assert page.evaluate("() => localStorage.getItem('llamabundle.apiKey')") == "sesame"
    assert page.evaluate("() => sessionStorage.getItem('llamabundle.apiKey')") is None


THINKING = "The user greets me. **Be friendly.**\n\n- say hello\n- ask back\n\n<script>alert(1)</script>\n"
ANSWER = "Hello! How are *you*?"


def _reasoning_sse() -> str:
    """A reasoning model's stream, as llama-server sends it: the thinking as
    ``reasoning_content`` deltas, then the reply as ``content`` deltas."""
    first = {"role": "assistant", "content": None}
    deltas = [first] + [{"reasoning_content": THINKING[i : i + 6]} for i in range(0, len(THINKING), 6)]
    deltas += [{"content": ANSWER[i : i + 4]} for i in range(0, len(ANSWER), 4)]
    events = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def _thinking(page) -> list:
    """Each assistant message's disclosure: (its summary, open, its body's text)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('#messages .msg.assistant')].map((m) => {
          const d = m.querySelector(':scope > details.thinking');
          return d && [d.querySelector(':scope > summary').textContent, d.open,
                       d.querySelector(':scope > .thinking-body').textContent];
        })"""
    )


def test_reasoning_is_folded_away_and_not_sent_back(page):
    """A reasoning model's thinking (``reasoning_content``, from a route standing in for the
    server) shows in a closed "Thinking" disclosure above the reply, is saved with the
    chat, and is not sent back with the next message."""
    bodies = []

    def handle(route):
        bodies.append(route.request.post_data_json)
        route.fulfill(status=200, content_type="text/event-stream", body=_reasoning_sse())

    page.route(f"**{CHAT}", handle)
    _wait(lambda: page.text_content("#model-name") == "stories260K")
    page.fill("#prompt", "Hi there")
    page.keyboard.press("Enter")
    _wait(lambda: not _busy(page) and page.locator("#messages .msg.assistant .meta").count() == 1)
    assert _reply_text(page) == "Hello! How are you?"
    assert page.text_content("#messages .msg.assistant .content em") == "you"
    shown = "The user greets me. Be friendly.say helloask back<script>alert(1)</script>"
    assert _thinking(page) == [["Thinking", False, shown]]
    body = "#messages .msg.assistant .thinking-body"
    assert page.is_hidden(body), "the thinking is shown before it is opened"
    assert page.locator(f"{body} script, #messages script").count() == 0
    page.click("#messages .msg.assistant details.thinking > summary")
    assert _thinking(page) == [["Thinking", True, shown]]
    assert page.is_visible(body)
    assert page.text_content(f"{body} strong") == "Be friendly."
    assert page.locator(f"{body} li").all_text_contents() == ["say hello", "ask back"]

    page.fill("#prompt", "Fine, thanks")
    page.keyboard.press("Enter")
    _wait(lambda: not _busy(page) and page.locator("#messages .msg.assistant .meta").count() == 2)
    assert len(bodies) == 2, bodies
    assert bodies[1]["messages"][-3:] == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "Fine, thanks"},
    ], bodies[1]
    assert "reasoning" not in json.dumps(bodies[1]) and "greets" not in json.dumps(bodies[1])
    assert _thinking(page) == [["Thinking", True, shown], ["Thinking", False, shown]]

    page.reload()  # the saved chat keeps the thinking, folded away again
    _wait(lambda: page.locator("#messages .msg.assistant").count() == 2)
    assert _thinking(page) == [["Thinking", False, shown], ["Thinking", False, shown]]
    assert _reply_text(page) == "Hello! How are you?"
    saved = page.evaluate(
        "() => JSON.parse(localStorage.getItem("
        "'llamabundle.conv.' + localStorage.getItem('llamabundle.current')))"
    )
    assert [m.get("reasoning") for m in saved["messages"]] == [None, THINKING, None, THINKING]
    _wait(lambda: page.text_content("#model-name") == "stories260K")
    page.click("#messages .msg.assistant .regenerate")  # regenerating works on the reply alone
    _wait(lambda: len(bodies) == 3 and not _busy(page))
    assert bodies[2]["messages"][-1] == {"role": "user", "content": "Fine, thanks"}, bodies[2]
    assert "reasoning" not in json.dumps(bodies[2])
    assert page.locator("#messages .msg.assistant").count() == 2
    assert _thinking(page)[-1] == ["Thinking", False, shown]
    ARTIFACTS.mkdir(exist_ok=True)
    page.click("#messages .msg.assistant details.thinking > summary")
    page.screenshot(path=str(ARTIFACTS / "webchat-thinking.png"))
    assert page.errors == [], page.errors


def test_thinking_label_while_reasoning_streams(page):
    """While only reasoning has arrived the disclosure says "Thinking…" (closed, and the
    user can open it); once the reply begins it says "Thinking"."""
    events = [{"choices": [{"index": 0, "delta": {"reasoning_content": "Hmm, let me see"}}]}]
    head = "".join(f"data: {json.dumps(e)}\n\n" for e in events)
    # route.fulfill() sends a body whole; this stream is held open after the reasoning
    # (by a stand-in for fetch) until the test sends the rest.
    page.evaluate(
        """(head) => {
          const real = window.fetch;
          window.fetch = (url, opts) => {
            if (!String(url).endsWith('/v1/chat/completions')) return real(url, opts);
            const enc = new TextEncoder();
            const body = new ReadableStream({
              start(c) {
                c.enqueue(enc.encode(head));
                window.__finish = (tail) => { c.enqueue(enc.encode(tail)); c.close(); };
              },
            });
            const headers = { 'Content-Type': 'text/event-stream' };
            return Promise.resolve(new Response(body, { status: 200, headers }));
          };
        }""",
        head,
    )
    _wait(lambda: page.text_content("#model-name") == "stories260K")
    page.fill("#prompt", "Think first")
    page.keyboard.press("Enter")
    _wait(lambda: _thinking(page) == [["Thinking\u2026", False, "Hmm, let me see"]])
    assert _busy(page)
    page.click("#messages .msg.assistant details.thinking > summary")  # opened mid-stream
    assert _thinking(page) == [["Thinking\u2026", True, "Hmm, let me see"]]
    tail = [{"choices": [{"index": 0, "delta": {"reasoning_content": "."}}]},
            {"choices": [{"index": 0, "delta": {"content": "Done."}, "finish_reason": "stop"}]}]  # fmt: skip
    page.evaluate("(tail) => window.__finish(tail)", "".join(f"data: {json.dumps(e)}\n\n" for e in tail))
    _wait(lambda: not _busy(page))
    assert _thinking(page) == [["Thinking", True, "Hmm, let me see."]]  # still open: the user opened it
    assert _reply_text(page) == "Done."
    assert page.errors == [], page.errors

"""The chat page in a real headless Chromium, driven over the DevTools protocol (websocket-client).

It types a question, clicks Send, and watches the thinking block fill, then the answer stream, then the
block fold into "Thought for N s"; then a second turn (the first answer goes back without its thinking),
Stop, New chat, and screenshots at desktop and phone width (paths printed; look at them).

Chromium missing: skipped, unless R1LAB_REQUIRE_BROWSER=1, then it fails.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

import test_serve as ts

pytestmark = pytest.mark.browser
API_KEY = "page-key"


def chromium_path() -> str:
    path = os.environ.get("R1LAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    problem = None
    if not path or not os.path.exists(path):
        problem = "headless Chromium not found (install it: apt-get install -y chromium)"
    else:
        try:
            import websocket  # noqa: F401 - websocket-client
        except ImportError:
            problem = "the websocket-client package is missing (pip install websocket-client)"
    if problem:
        if os.environ.get("R1LAB_REQUIRE_BROWSER") == "1":
            pytest.fail(problem + "; R1LAB_REQUIRE_BROWSER=1 requires the browser test to run")
        pytest.skip(problem)
    return path


class CDP:
    """A minimal DevTools protocol client for one page target."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:  # events (no id) are ignored
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"page error in {expression[:80]!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float = 20.0, what: str = ""):
        deadline, value = time.monotonic() + timeout, None
        while True:
            try:
                value = self.js(expression)
            except RuntimeError as e:  # e.g. the element is not there yet
                value = None if time.monotonic() < deadline else e
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what or expression}"
            time.sleep(0.03)

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (not element.click())."""
        box = self.js(f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();"
                      " return [r.x + r.width / 2, r.y + r.height / 2, r.width * r.height]; })()")
        assert box[2] > 0, f"{selector} is not visible"
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type(self, selector: str, text: str) -> None:
        self.click(selector)
        self.call("Input.insertText", text=text)

    def screenshot(self, path: Path, width: int, height: int, mobile: bool) -> Path:
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile)
        time.sleep(0.2)  # let layout settle
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        self.ws.close()


@contextmanager
def chromium(url: str, profile: Path):
    port_file = profile / "DevToolsActivePort"
    port_file.unlink(missing_ok=True)  # a stale one from an earlier run would name a dead port
    proc = subprocess.Popen([chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1280,800", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cdp = None
    try:
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, f"chromium exited with {proc.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        while True:
            try:
                pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
            except httpx.TransportError:
                pages = []
            if pages:
                break
            assert time.monotonic() < deadline, "chromium opened no page"
            time.sleep(0.05)
        cdp = CDP(pages[0]["webSocketDebuggerUrl"])
        yield cdp
    finally:
        if cdp is not None:
            cdp.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class PacedEngine:
    """The engine, with each streamed event held back a little so a person (or this test) can watch the
    page change state. Everything else is the engine's own."""

    def __init__(self, engine, delay: float):
        self.engine, self.delay = engine, delay

    def __getattr__(self, name):
        return getattr(self.engine, name)

    async def stream(self, prompt_token_ids, params):
        events = self.engine.stream(prompt_token_ids, params)
        try:
            async for ev in events:
                await asyncio.sleep(self.delay)
                yield ev
        finally:
            await events.aclose()


# Records every distinct look of the last assistant message, and the bodies the page sends.
RECORDER = """
window.__log = []; window.__bodies = [];
const realFetch = window.fetch;
window.fetch = (url, opts) => {
  if (opts && opts.body) window.__bodies.push(JSON.parse(opts.body));
  return realFetch(url, opts);
};
new MutationObserver(() => {
  const all = document.querySelectorAll('.msg.assistant'); const m = all[all.length - 1]; if (!m) return;
  const e = {state: m.dataset.state, thinking: m.querySelector('.thinking-text').textContent,
             answer: m.querySelector('.answer').textContent, summary: m.querySelector('summary').textContent,
             open: m.querySelector('details').open, n: all.length};
  const last = window.__log[window.__log.length - 1];
  if (!last || JSON.stringify(last) !== JSON.stringify(e)) window.__log.push(e);
}).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true, attributes: true});
true
"""


def test_chat_page_in_chromium(tokenizer, tmp_path):
    chromium_path()
    model = ts.scripted_model(tokenizer)
    engine = ts.Engine(model, tokenizer, max_running=4, max_model_len=256)
    engine.start()
    paced = PacedEngine(engine, delay=0.06)
    try:
        with ts.serve(None, tokenizer, "reasoner", engine=paced, api_key=API_KEY) as server, \
             chromium(server.url + "/", tmp_path / "profile") as page:
            run_page_checks(page, engine, tmp_path)
    finally:
        engine.stop()


def run_page_checks(page: CDP, engine, out: Path) -> None:
    page.call("Page.enable")
    page.call("Emulation.setDeviceMetricsOverride", width=1280, height=800, deviceScaleFactor=1, mobile=False)
    page.wait("document.readyState === 'complete'")
    # the API key: /v1 says 401 until one is entered under Settings
    page.wait("document.getElementById('model-name').textContent.includes('API key')", what="the API-key hint")
    page.click("#settings summary")
    page.type("#api-key", API_KEY)
    page.js("document.getElementById('api-key').dispatchEvent(new Event('change')); true")
    page.wait("document.getElementById('model-name').textContent === 'reasoner'", what="the model name")
    page.click("#settings summary")  # fold the settings again
    page.js(RECORDER)

    # turn 1: type, click Send, watch it think, answer, fold
    page.type("#input", "What is 4821 + 1379?")
    page.click("#send")
    page.wait("document.querySelector('.msg.assistant')?.dataset.state === 'done'", what="the first answer")
    log = page.js("window.__log")
    thinking_phase = [e for e in log if e["state"] == "thinking" and e["thinking"] and not e["answer"]]
    assert len({e["thinking"] for e in thinking_phase}) >= 3, f"the thinking did not stream in: {log}"
    assert all(e["open"] and e["summary"] == "Thinking…" for e in thinking_phase)
    assert all(ts.THINKING.startswith(e["thinking"]) for e in thinking_phase)
    first_answer = next(i for i, e in enumerate(log) if e["answer"])
    assert first_answer > log.index(thinking_phase[-1]), "the answer came before the thinking"
    answering = [e for e in log[first_answer:] if e["state"] == "answering"]
    assert len({e["answer"] for e in answering}) >= 2, f"the answer did not stream in: {log}"
    assert all(not e["open"] and e["summary"].startswith("Thought for") for e in log[first_answer:])
    final = log[-1]
    assert (final["thinking"], final["answer"]) == (ts.THINKING, ts.ANSWER)
    assert final["summary"].startswith("Thought for ") and final["summary"].endswith(" s")
    meta = page.js("document.querySelector('.msg.assistant .meta').textContent")
    assert "tokens" in meta and "thinking" in meta, meta  # the usage chunk was read
    shot = page.screenshot(out / "chat-desktop.png", 1280, 800, mobile=False)
    print(f"\nscreenshot: {shot}")

    # turn 2: the history carries the first answer without its thinking
    page.type("#input", "And 5 + 6?")
    page.click("#send")
    page.wait("document.querySelectorAll('.msg.assistant')[1]?.dataset.state === 'done'", what="the second answer")
    sent = page.js("window.__bodies")[-1]
    assert sent["messages"] == [{"role": "user", "content": "What is 4821 + 1379?"},
                                {"role": "assistant", "content": ts.ANSWER},
                                {"role": "user", "content": "And 5 + 6?"}]
    assert sent["stream"] is True and sent["model"] == "reasoner" and "temperature" in sent and "max_tokens" in sent

    # phone width: nothing wider than the screen, the composer and the buttons still on it
    shot = page.screenshot(out / "chat-phone.png", 390, 844, mobile=True)
    print(f"screenshot: {shot}")
    assert page.js("document.documentElement.scrollWidth <= window.innerWidth + 1"), "horizontal overflow at 390 px"
    assert page.js("(() => { const r = document.getElementById('send').getBoundingClientRect();"
                   " return r.right <= window.innerWidth && r.bottom <= window.innerHeight; })()")

    # Stop: the stream is cancelled on the server too
    page.type("#input", "Think for a long time.")
    page.click("#send")
    page.wait("document.querySelectorAll('.msg.assistant')[2]?.querySelector('.thinking-text').textContent.length > 0",
              what="the third reply to start")
    shot = page.screenshot(out / "chat-phone-thinking.png", 390, 844, mobile=True)
    print(f"screenshot: {shot}")
    page.click("#stop")
    page.wait("document.querySelectorAll('.msg.assistant')[2].dataset.state === 'stopped'", what="the stopped state")
    stopped = page.js("document.querySelectorAll('.msg.assistant')[2].querySelector('.thinking-text').textContent")
    assert ts.THINKING.startswith(stopped) and stopped != ts.THINKING
    ts.wait_idle(engine)
    assert page.js("!document.getElementById('send').hidden && document.getElementById('stop').hidden")

    # New chat, clicked while a reply streams: empty page, the reply is cancelled, and the next request
    # starts a fresh history
    page.type("#input", "Think again.")
    page.click("#send")
    page.wait("document.querySelectorAll('.msg.assistant')[3]?.querySelector('.thinking-text').textContent.length > 0",
              what="the fourth reply to start")
    page.click("#new-chat")
    assert page.js("document.querySelectorAll('.msg').length") == 0
    page.wait("!document.getElementById('send').hidden", what="the Send button to come back")
    ts.wait_idle(engine)
    page.type("#input", "Hello again")
    page.click("#send")
    page.wait("document.querySelector('.msg.assistant')?.dataset.state === 'done'", what="the answer after New chat")
    assert page.js("window.__bodies")[-1]["messages"] == [{"role": "user", "content": "Hello again"}]
    shot = page.screenshot(out / "chat-phone-new.png", 390, 844, mobile=True)
    print(f"screenshot: {shot}")


# ---------------------------------------------------------------- Markdown, math and safety

MD_THINKING = ("Carry the ones: $\\frac{14}{3}$ is not whole.\n\n"
               "Then **add** the columns:\n\n- ones\n- tens\n")
MD_ANSWER = ("The sum is\n\n$$4821 + 1379 = 6200$$\n\n"
             "so the answer is \\boxed{6200}, and a third of 14 is \\(\\frac{14}{3}\\).\n\n"
             "<img src=x onerror=\"window.__pwned = 1\"><script>window.__pwned = 2</script>\n\n"
             "[click me](javascript:window.__pwned=3) and `code <b>bold</b>`\n\n"
             "| a | b |\n|---|---|\n| 1 | 2 |\n")


class ScriptedTextEngine:
    """Streams one fixed completion (thinking, "</think>", answer), its tokens two per event, whatever
    the prompt: the page test needs exact Markdown, which a bigram-scripted model cannot write (its
    tokens would repeat). The server in front of it is the real one."""

    max_running, max_model_len = 4, 256

    def __init__(self, tokenizer, text: str, delay: float = 0.01):
        self.tokenizer, self.ids, self.delay = tokenizer, tokenizer.encode(text), delay
        assert tokenizer.decode(self.ids) == text

    def stats(self) -> dict:
        return {"running": 0, "waiting": 0}

    async def stream(self, prompt_token_ids, params):
        from r1lab.engine import StreamEvent

        decode = self.tokenizer.decode
        for n in range(0, len(self.ids), 2):
            await asyncio.sleep(self.delay)
            text = decode(self.ids[:n + 2])[len(decode(self.ids[:n])):]  # the text is ASCII: no split characters
            yield StreamEvent(text=text, token_ids=self.ids[n:n + 2], finish_reason="stop" if n + 2 >= len(self.ids) else None)


CSP = "default-src 'self'; script-src 'self'; style-src 'self'; font-src 'self'; img-src 'self'; connect-src 'self'"

WATCH = """
window.__violations = [];
document.addEventListener('securitypolicyviolation', (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));
"""

# keeps the answer's first rendered block: if streaming re-rendered finished blocks, it would be replaced
KEEP_FIRST_BLOCK = """
new MutationObserver(() => {
  const answer = document.querySelector('.msg.assistant .answer');
  if (answer && answer.children.length >= 2 && !window.__firstBlock) window.__firstBlock = answer.children[0];
}).observe(document.getElementById('messages'), {subtree: true, childList: true});
true
"""


def test_markdown_and_math_render_safely_while_streaming(tokenizer, tmp_path):
    chromium_path()
    from starlette.middleware.base import BaseHTTPMiddleware

    from r1lab.serve import create_app
    from r1lab.serve.cli import ServerThread

    engine = ScriptedTextEngine(tokenizer, MD_THINKING + "</think>\n\n" + MD_ANSWER)
    app = create_app(engine, tokenizer, "reasoner")

    async def strict_csp(request, call_next):  # the strictest policy the page should live with
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        return response

    app.add_middleware(BaseHTTPMiddleware, dispatch=strict_csp)
    with ServerThread(app) as server, chromium("about:blank", tmp_path / "profile") as page:
        page.call("Page.enable")
        page.call("Page.addScriptToEvaluateOnNewDocument", source=WATCH)
        page.call("Emulation.setDeviceMetricsOverride", width=1000, height=900, deviceScaleFactor=1, mobile=False)
        page.call("Page.navigate", url=server.url + "/")
        page.wait("document.readyState === 'complete' && document.getElementById('model-name').textContent === 'reasoner'",
                  what="the page")
        page.js(KEEP_FIRST_BLOCK)
        page.type("#input", "What is 4821 + 1379?")
        page.click("#send")
        page.wait("document.querySelector('.msg.assistant')?.dataset.state === 'done'", what="the answer")
        page.click(".msg.assistant details summary")  # open the folded thinking, to see it in the screenshot
        shot = page.screenshot(tmp_path / "chat-markdown.png", 1000, 900, mobile=False)
        print(f"\nscreenshot: {shot}")
        q = "document.querySelector('.msg.assistant .answer')"
        # math: fractions in the thinking and the answer, display math, \boxed
        assert page.js("document.querySelectorAll('.msg.assistant .thinking-text .katex .mfrac').length") == 1
        assert page.js(f"{q}.querySelectorAll('.katex .mfrac').length") == 1
        assert page.js(f"{q}.querySelectorAll('.katex-display').length") == 1
        assert page.js(f"{q}.querySelectorAll('.katex .boxpad').length") == 1
        assert "6200" in page.js(f"{q}.querySelector('.katex .boxpad').textContent")
        assert page.js(f"{q}.querySelectorAll('.math-source').length") == 0  # every formula parsed
        # Markdown: bold, a list, a table, inline code (whose HTML stays text)
        assert page.js("document.querySelector('.msg.assistant .thinking-text strong').textContent") == "add"
        assert page.js("document.querySelectorAll('.msg.assistant .thinking-text li').length") == 2
        assert page.js(f"{q}.querySelectorAll('table td').length") == 2
        assert page.js(f"{q}.querySelector('code').textContent") == "code <b>bold</b>"
        # safety: the model's HTML is shown as text, never run; no image, script or javascript: link
        text = page.js(f"{q}.textContent")
        assert '<img src=x onerror="window.__pwned = 1">' in text and "<script>window.__pwned = 2</script>" in text
        assert page.js("document.querySelectorAll('.msg img, .msg script, .msg [onerror]').length") == 0
        assert page.js(f"[...{q}.querySelectorAll('a')].every(a => !a.getAttribute('href') || "
                       "!a.getAttribute('href').trim().toLowerCase().startsWith('javascript'))")
        assert page.js(f"{q}.querySelector('a').textContent") == "click me"
        page.click(".msg.assistant .answer a")
        time.sleep(0.2)
        assert page.js("window.__pwned === undefined")
        # streaming re-rendered only the growing block: the first one is the node first shown
        assert page.js(f"window.__firstBlock !== undefined && {q}.children[0] === window.__firstBlock")
        # everything came from this server (fonts too), and the strict CSP blocked nothing
        assert page.js("document.fonts.check('16px KaTeX_Main')")
        resources = page.js("performance.getEntriesByType('resource').map(e => [e.name, e.responseStatus])")
        assert all(name.startswith(server.url) for name, _ in resources), resources
        assert any("KaTeX_Main-Regular.woff2" in name and status == 200 for name, status in resources), resources
        assert page.js("window.__violations") == []
        # the renderer's edge cases: currency is not math, code keeps its dollars, broken TeX shows as its
        # source, and blocks split at blank lines outside display math and code fences
        render = "((s) => {{ const b = R1Markdown.renderBlock(s); return [b.querySelectorAll('.katex').length, " \
                 "b.querySelectorAll('.math-source').length, b.textContent]; }})({!r})"
        assert page.js(render.format("It costs $5 and $10 today.")) == [0, 0, "It costs $5 and $10 today."]
        assert page.js(render.format("`$x$` and\n```\n$y$\n```"))[:2] == [0, 0]
        assert page.js(render.format("so \\[\\frac{1}{\\]"))[:2] == [0, 1]
        assert page.js(render.format("a \\$ sign, $x^2$ and \\frac{1}{2"))[:2] == [1, 0]
        source = "one\\n\\n$$\\nx\\n\\ny\\n$$\\n\\n```\\na\\n\\nb\\n```\\n\\n1. item\\n\\n    more"
        blocks = page.js(f"R1Markdown.splitBlocks('{source}')")
        assert blocks == ["one\n", "$$\nx\n\ny\n$$\n", "```\na\n\nb\n```\n", "1. item\n\n    more"], blocks
        # phone width: wide math and tables scroll inside themselves, the page does not
        shot = page.screenshot(tmp_path / "chat-markdown-phone.png", 390, 844, mobile=True)
        print(f"screenshot: {shot}")
        assert page.js("document.documentElement.scrollWidth <= window.innerWidth + 1"), "horizontal overflow at 390 px"

"""The browser page (`/`) in Debian's Chromium, headless, against a real uvicorn server on 127.0.0.1.

Chromium is driven through the Chrome DevTools Protocol over one websocket (the `websockets` package
that uvicorn[standard] brings), so no test tool downloads a browser of its own. tests/browser_setup.sh
installs Chromium when it is missing (make test runs it; this module runs it too); the tests skip only
when it cannot be installed. Screenshots go to test-artifacts/browser/ (and failed-*.png when a wait times out).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from embedstore.service.app import create_app
from embedstore.service.settings import Settings
from embedstore.store import open_store
from tests.servers import serving

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = Path(os.environ.get("EMBEDSTORE_CHROMIUM", "/usr/bin/chromium"))
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--remote-debugging-port=0", "--window-size=1360,900", "--hide-scrollbars"]
K = 8  # the page's default k
TOKEN = "browser-test-token"


# -- a few DevTools Protocol calls --------------------------------------------------------------
class Tab:
    """Just enough of the DevTools Protocol to drive one tab: evaluate, wait, click, type, upload, screenshot."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=20)
        self.last_id = 0
        self.log: list[str] = []  # console output and page exceptions, printed when an assertion fails
        self.send("Runtime.enable")
        self.send("Page.enable")

    def send(self, method: str, **params) -> dict:
        self.last_id += 1
        self.ws.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._event(message)

    def _event(self, message: dict) -> None:
        params = message.get("params", {})
        if message.get("method") == "Runtime.consoleAPICalled":
            self.log.append(f"console.{params['type']}: " + " ".join(str(a.get("value", a.get("description")))
                                                                     for a in params["args"]))
        elif message.get("method") == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.log.append("exception: " + details.get("exception", {}).get("description", details["text"]))

    def js(self, expression: str):
        """The value of a JS expression (promises awaited); page-script globals such as `map` are in scope."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, what: str, timeout: float = 20):
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                self.screenshot(f"failed-{what.replace(' ', '-')[:40]}")
                raise AssertionError(f"timed out waiting for {what} ({expression})\n" + "\n".join(self.log[-20:]))
            time.sleep(0.1)

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait(f"location.href.startsWith({json.dumps(url)}) && document.readyState === 'complete'", "page load")

    def centre(self, selector: str) -> tuple[float, float]:
        box = self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
                      f" const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        return box[0], box[1]

    def mouse(self, kind: str, x: float, y: float, **extra) -> None:
        self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, **extra)

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (pointer events, as a user's)."""
        x, y = self.centre(selector)
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y, button="left", buttons=1, clickCount=1)
        self.mouse("mouseReleased", x, y, button="left", buttons=0, clickCount=1)

    def type(self, selector: str, text: str, enter: bool = True) -> None:
        self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.focus(); e.select(); }})()")
        self.send("Input.insertText", text=text)
        if enter:
            for kind in ("keyDown", "keyUp"):
                self.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                          **({"text": "\r"} if kind == "keyDown" else {}))

    def upload(self, selector: str, path: Path) -> None:
        """Set a file input as a user choosing a file would (fires its change event)."""
        root = self.send("DOM.getDocument", depth=0)["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(path)])

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        self.ws.close()




def chromium_or_skip() -> Path:
    """Debian's Chromium, installed by tests/browser_setup.sh when missing; skip (with its reason) when it cannot be."""
    if not CHROMIUM.exists():
        setup = subprocess.run(["bash", str(ROOT / "tests" / "browser_setup.sh")], capture_output=True, text=True,
                               timeout=900, env={**os.environ, "EMBEDSTORE_CHROMIUM": str(CHROMIUM)})
        if not CHROMIUM.exists():
            pytest.skip(f"Chromium not installed at {CHROMIUM} and it could not be installed here: "
                        f"{setup.stderr.strip() or 'tests/browser_setup.sh gave no reason'}")
    return CHROMIUM


@pytest.fixture(scope="module")
def tab() -> Iterator[Tab]:
    """One headless Chromium with a fresh profile, and its first tab."""
    binary = chromium_or_skip()
    profile = Path(tempfile.mkdtemp(prefix="embedstore-chromium-"))
    process = subprocess.Popen([str(binary), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().split()) == 2):
            assert process.poll() is None, f"chromium exited with {process.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        tab = Tab(pages[0]["webSocketDebuggerUrl"])
        yield tab
        tab.close()
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser_store(served_store) -> Path:
    return served_store


@pytest.fixture(scope="module")
def upload_file(browser_store) -> Path:
    """A stored video's file: its bytes match, so the page can place the upload on the map."""
    with open_store(browser_store, read_only=True) as store:
        return Path(store.videos()[0]["source_path"])


CARDS = "document.querySelectorAll('#results .card').length"
THUMBS_LOADED = ("[...document.querySelectorAll('#results img')].every(i => i.src.startsWith('blob:') "
                 "&& i.complete && i.naturalWidth > 0)")
MAP = "document.querySelector('#map').dataset"


def page_ready(tab: Tab) -> None:
    tab.wait("document.querySelectorAll('#encoder option').length > 0", "encoders")
    tab.wait(f"Number({MAP}.points) > 0", "the map's points")


def search_by_upload(tab: Tab, path: Path) -> None:
    tab.upload("#file", path)
    tab.wait(f"{CARDS} === {K}", f"{K} result cards")
    tab.wait(THUMBS_LOADED, "animated thumbnails")


def test_search_click_and_filter_in_a_browser(tab, browser_store, upload_file):
    with serving(create_app(browser_store, Settings())) as url:
        tab.goto(url + "/")
        page_ready(tab)
        assert tab.js("document.querySelector('#text').disabled"), "r3d has no text tower: text search is off"
        assert tab.js("document.querySelector('#method').value") == "pca"  # no UMAP stored: the PCA view is shown

        # Upload: k cards with score, patient, EF and split; the EF estimate; the query and neighbours on the map.
        search_by_upload(tab, upload_file)
        first = tab.js("document.querySelector('#results .card').innerText")
        assert "score" in first and "patient" in first and "EF" in first
        assert "±" in tab.js("document.querySelector('#ef-estimate').innerText")
        before = tab.js(f"({{...{MAP}}})")
        assert before["queryId"] == upload_file.stem and before["queryEstimated"] == "false"
        assert len(before["neighbours"].split()) == K
        tab.screenshot("1-upload")

        # Hover a point: the tooltip names it; wheel zooms; drag pans.
        x0, y0 = tab.centre("#map-canvas")
        box = tab.js("(() => { const r = document.querySelector('#map-canvas').getBoundingClientRect(); return [r.x, r.y]; })()")
        px, py = tab.js("[map.sx[3], map.sy[3]]")
        tab.mouse("mouseMoved", box[0] + px, box[1] + py)
        tip = tab.wait("!document.querySelector('#tooltip').hidden && document.querySelector('#tooltip').innerText",
                       "the hover tooltip")
        assert tip.startswith(tab.js("map.view.ids[3]")) and "EF" in tip
        tab.send("Input.dispatchMouseEvent", type="mouseWheel", x=x0, y=y0, deltaX=0, deltaY=-400)
        tab.wait("map.zoom.s > 1.5", "zoom by wheel")
        tab.mouse("mousePressed", x0, y0, button="left", buttons=1, clickCount=1)
        tab.mouse("mouseMoved", x0 + 60, y0 + 30, button="left", buttons=1)
        tab.mouse("mouseReleased", x0 + 60, y0 + 30, button="left", buttons=0, clickCount=1)
        tab.wait("map.zoom.x > 30 && map.zoom.y > 10", "pan by drag")
        tab.js("(() => { const s = document.querySelector('#colour'); s.value = 'split';"
               " s.dispatchEvent(new Event('change')); })()")
        assert "TRAIN" in tab.js("document.querySelector('#legend').innerText")

        # Click the third card: a search from it, and the map's query marker moves there.
        clicked = tab.js("document.querySelectorAll('#results .card')[2].dataset.id")
        tab.click("#results .card:nth-child(3)")
        tab.wait(f"{MAP}.queryId === {json.dumps(clicked)}", "the query marker on the clicked video")
        tab.wait(f"{CARDS} === {K} && document.querySelector('#summary').innerText.includes({json.dumps(clicked)})",
                 "the clicked video's neighbours")
        after = tab.js(f"({{...{MAP}}})")
        assert after["queryPos"] != before["queryPos"] and clicked not in after["neighbours"].split()
        tab.wait(THUMBS_LOADED, "animated thumbnails")
        tab.screenshot("2-clicked")

        # A bad filter: the page shows the API's own message.
        bad = "ef >>> 40"
        tab.type("#where", bad)
        shown = tab.wait("!document.querySelector('#error').hidden && document.querySelector('#error').innerText",
                         "the filter error")
        api = httpx.post(url + "/search", json={"encoder": "r3d", "k": K, "target": "videos", "where": bad,
                                               "query": {"video_id": clicked}, "exclude_self": True})
        assert api.status_code == 400 and shown == api.json()["error"]["message"]
        tab.screenshot("3-bad-filter")
        tab.type("#where", "split = 'TRAIN'")
        tab.wait(f"document.querySelector('#error').hidden && {CARDS} > 0", "a filtered search")
    assert not [line for line in tab.log if line.startswith("exception")], tab.log


def test_the_page_asks_for_the_token_once(tab, browser_store, upload_file):
    with serving(create_app(browser_store, Settings(api_token=TOKEN))) as url:
        tab.goto(url + "/")
        tab.wait("!document.querySelector('#token-overlay').hidden", "the token form")
        assert tab.js("document.querySelectorAll('#encoder option').length") == 0  # nothing loaded without it
        tab.screenshot("4-token-form")

        tab.type("#token", "wrong")  # Enter submits the form
        tab.wait("document.querySelector('#token-note').innerText.includes('refused')", "a refused token")
        tab.type("#token", TOKEN)
        page_ready(tab)
        search_by_upload(tab, upload_file)  # thumbnails too: they are fetched with the token
        assert tab.js("sessionStorage.getItem('embedstore.token')") == TOKEN

        tab.js("window.beforeReload = true")
        tab.send("Page.reload")  # the same tab keeps the token for the session: no second question
        tab.wait("!window.beforeReload && document.readyState === 'complete' "
                 "&& document.querySelectorAll('#encoder option').length > 0", "encoders after a reload")
        assert tab.js("document.querySelector('#token-overlay').hidden")
        tab.screenshot("5-token-kept")


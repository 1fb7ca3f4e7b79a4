"""The ops dashboard in a real headless chromium, driven over the DevTools protocol (CDP), while a stream is
published in real time into a deployed pipeline with API keys on. Screenshots go to test-artifacts/
(LIVELENS_TEST_ARTIFACTS elsewhere)."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from pipelines.api.client import Client
from pipelines.kafka.publish import SegmentPublisher
from tests.conftest import REPO_ROOT
from tests.integration.conftest import _free_port, wait_for
from tests.integration.test_pipeline import stored_segments

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("LIVELENS_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))


class Chromium:
    """A headless chromium with one page, driven over CDP on its websocket (flat session mode)."""

    def __init__(self, profile_dir: Path):
        profile_dir.mkdir(parents=True, exist_ok=True)
        self.log = (profile_dir / "chromium.log").open("wb")
        # Port 0: chromium picks a free port and writes it to DevToolsActivePort, so no port can be taken
        # between choosing it and chromium binding it.
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--remote-debugging-port=0", f"--user-data-dir={profile_dir}", "--window-size=1400,1000", "about:blank"],
            stdout=self.log, stderr=self.log)
        active = profile_dir / "DevToolsActivePort"
        wait_for(lambda: active.exists() and len(active.read_text().split()) == 2, 30, "chromium's DevTools port")
        port, path = active.read_text().split()
        self.ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=10)
        self._ids = itertools.count(1)
        self.session = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, timeout_s: float = 30, **params):
        """Send one command (to the page's session once attached) and return its result; events are skipped."""
        message_id = next(self._ids)
        message = {"id": message_id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout_s
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait(f"location.href.startsWith({json.dumps(url.split('?')[0])}) && document.readyState === 'complete'",
                  30, f"{url} to load")

    def wait(self, expression: str, timeout_s: float, what: str):
        return wait_for(lambda: self.evaluate(expression), timeout_s, what)

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        self.ws.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def browser(tmp_path):
    if not os.access(CHROMIUM, os.X_OK):
        raise FileNotFoundError(f"no chromium at {CHROMIUM}: run deploy/install_system_packages.sh")
    chromium = Chromium(tmp_path / "chromium")
    yield chromium
    chromium.close()


ROW = "document.querySelector('tr[data-stream=\"acme/news\"]')"
CELLS = f"""(() => {{ const row = {ROW}; if (!row) return null;
  const cell = (c) => row.querySelector('.' + c).textContent;
  return {{status: cell('status'), lag: cell('lag'), fps: cell('fps'), tokens: cell('tokens'),
           memory: cell('memory'), alert: cell('alert')}}; }})()"""


def test_dashboard_follows_a_live_stream_and_answers_from_its_query_box(deployed, sample_video, browser):
    video, truth = sample_video
    config = deployed(http=True, serve={"port": _free_port(), "api_keys": {"ops-key": "acme"}})
    base = Client(config).http_url
    headline = truth["headlines"][0]["text"]  # on screen from t = 0
    # The pages are static and keyless; only the files of the dashboard are served from its package.
    assert 'data-page="overview"' in httpx.get(f"{base}/", timeout=30).text
    assert httpx.get(f"{base}/dashboard/static/__init__.py", timeout=30).status_code == 404
    key = {"x-api-key": "ops-key"}
    registered = httpx.post(f"{base}/v1/standing-queries", headers=key, timeout=60,
                            json={"text": headline.lower(), "stream_ids": ["news"]})
    assert registered.status_code == 201, registered.text
    stop = threading.Event()
    publisher = threading.Thread(target=SegmentPublisher(kafka=config.kafka).publish, kwargs={
        "source": str(video), "stream_id": "news", "tenant_id": "acme", "pace": "realtime", "stop": stop})
    publisher.start()
    try:
        wait_for(lambda: stored_segments(config, "news", "acme") >= 1, 120, "the first segment in memory")

        # Without a key the page's data calls are refused, and it says what is missing.
        browser.goto(f"{base}/dashboard")
        browser.wait("document.getElementById('updated').textContent.includes('API key is required')", 20,
                     "the page to ask for a key")
        # A key given once in the address is kept (localStorage) and sent with every call.
        browser.goto(f"{base}/dashboard?key=ops-key")
        first = browser.wait(CELLS, 30, "the stream's row")
        assert first["status"] == "live", first
        # The numbers move while segments land: memory grows, and the lag is re-read at every poll.
        second = browser.wait(f"(() => {{ const now = {CELLS}; return now.memory !== {json.dumps(first['memory'])}"
                              " && now; })()", 30, "the stream's numbers to change")
        frames = [int(cells["memory"].split()[0].replace(",", "")) for cells in (first, second)]
        assert frames[1] > frames[0] and second["lag"] != first["lag"], (first, second)
        third = browser.wait(f"(() => {{ const now = {CELLS}; return now.fps !== '–' && now; }})()", 30,
                             "an fps reading")
        assert float(third["fps"]) > 0 and int(third["tokens"].split()[0].replace(",", "")) > 0, third
        last_alert = browser.wait(f"(() => {{ const now = {CELLS}; return now.alert.startsWith('MATCH') && now; }})()",
                                  60, "the standing query's alert as the stream's last alert")
        assert "standing query matched" in last_alert["alert"]
        print(f"dashboard rows: {first} -> {second} -> {third}")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shots = [browser.screenshot(ARTIFACTS / "dashboard-overview.png")]

        # The stream's page: thumbnails fetched with the key, on-screen text, the alert on the timeline.
        browser.evaluate(f"{ROW}.querySelector('a').click()")
        browser.wait("location.pathname === '/dashboard/streams/news' && document.readyState === 'complete'", 20,
                     "the stream page")
        browser.wait("document.querySelectorAll('#timeline .frame img[src^=\"blob:\"]').length >= 2", 30,
                     "thumbnails on the timeline")
        browser.wait("document.getElementById('texts').textContent.includes('STORM WARNING')", 30,
                     "the headline among the on-screen text")
        browser.wait("document.querySelectorAll('#stream-alerts li').length >= 1", 30, "the stream's alerts")
        # A question from the page's query box: the answer and its evidence, with thumbnails.
        browser.evaluate(f"document.getElementById('question').value = {json.dumps('storm warning for the coast')};"
                         "document.querySelector('#query-form button').click()")
        evidence = browser.wait(
            "(() => { const items = [...document.querySelectorAll('#evidence li.evidence')];"
            " return items.length && items.every((i) => i.querySelector('img').src.startsWith('blob:'))"
            " && items.map((i) => i.textContent); })()", 60, "the answer's evidence")
        assert any("STORM WARNING" in text for text in evidence), evidence
        assert "evidence" in browser.evaluate("document.getElementById('answer-meta').textContent")
        shots.append(browser.screenshot(ARTIFACTS / "dashboard-stream.png"))

        # The alerts page lists the alert; acknowledging it from the page sticks.
        browser.goto(f"{base}/dashboard/alerts")
        browser.wait("document.querySelectorAll('#alerts tbody tr').length >= 1", 30, "the alert log")
        browser.evaluate("document.querySelector('#alerts tbody tr button').click()")
        browser.wait("document.querySelector('#alerts tbody tr').textContent.includes('by dashboard')", 30,
                     "the acknowledgement after the next poll")
        shots.append(browser.screenshot(ARTIFACTS / "dashboard-alerts.png"))
        assert all(shot.stat().st_size > 10_000 for shot in shots)
        print("screenshots:", *shots)
    finally:
        stop.set()
        publisher.join(timeout=60)

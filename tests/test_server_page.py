"""The server's page in headless Chromium (driven over the DevTools protocol): pick a task, upload a file and read
the offline transcript from the page; record from a (fake) microphone and get a transcript back; transcribe the
microphone live over the WebSocket, the text growing in the page."""

import itertools
import json
import shutil
import subprocess
import time
import urllib.request

import pytest
import soundfile as sf
import websocket
from test_transcription import _two_task_model

from wavadapt.data.audio import SAMPLE_RATE, read_audio
from wavadapt.data.corpora import open_corpus
from wavadapt.inference.registry import Registry
from wavadapt.inference.server import ServerConfig, create_app, serving
from wavadapt.inference.transcription import Request, transcribe_requests

TIMEOUT = 60.0


class Page:
    """One Chromium tab over the DevTools protocol: commands, and JavaScript evaluated in the page."""

    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=TIMEOUT, suppress_origin=True)
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        """The events of the domains enabled (Network.enable: the page's WebSocket frames), in order."""

    def send(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries our id
            reply = json.loads(self.ws.recv())
            if reply.get("id") == message_id:
                assert "error" not in reply, reply["error"]
                return reply["result"]
            self.events.append(reply)

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = TIMEOUT):
        deadline = time.monotonic() + timeout
        while not (value := self.js(expression)):
            assert time.monotonic() < deadline, f"timed out waiting for {expression}"
            time.sleep(0.05)
        return value


@pytest.fixture
def browser(tmp_path, synth_corpus):
    """Headless Chromium with a fake microphone that plays a corpus file; yields a function opening a tab."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed: `make setup` installs it (Debian: apt-get install chromium)"
    speech = next(u.path for u in open_corpus(synth_corpus, "test", "en"))
    wav = tmp_path / "microphone.wav"
    sf.write(wav, read_audio(speech), SAMPLE_RATE, subtype="PCM_16")  # what Chromium's fake capture reads
    profile = tmp_path / "profile"
    process = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
         f"--use-file-for-fake-audio-capture={wav}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + TIMEOUT
        while not (port_file.exists() and port_file.read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])

        def open_tab(url: str) -> Page:
            tab = Page(_debugger_url(port))
            tab.send("Page.enable")
            tab.send("Page.navigate", url=url)
            return tab

        yield open_tab
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _debugger_url(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=TIMEOUT) as response:
        targets = json.load(response)
    return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")


def test_the_page_transcribes_an_upload_and_a_recording(browser, synth_corpus):
    registry = Registry(_two_task_model("layer"))
    upload = next(u.path for u in open_corpus(synth_corpus, "test", "es"))
    expected, = transcribe_requests(registry.model, [Request(upload, "es")])
    with serving(create_app(registry)) as url:
        tab = browser(url + "/")
        tab.wait_for("document.querySelector('#task') && document.querySelector('#task').options.length === 2")
        assert tab.js("[...document.querySelector('#task').options].map(o => o.value)") == ["en", "es"]
        tab.js("document.querySelector('#task').value = 'es'")
        root = tab.send("DOM.getDocument")["root"]["nodeId"]
        file_input = tab.send("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
        tab.send("DOM.setFileInputFiles", files=[str(upload)], nodeId=file_input)
        tab.js("document.querySelector('#transcribe').click()")
        status = tab.wait_for("/^(Done|Error)/.test(document.querySelector('#status').textContent) && "
                              "document.querySelector('#status').textContent")
        assert status.startswith("Done"), status
        assert tab.js("document.querySelector('#transcript').textContent") == expected.text
        # The same upload with the decoder chosen on the page: the beam search's transcript.
        beam, = transcribe_requests(registry.model, [Request(upload, "es", decoder=registry.decoder("es", "beam"))])
        tab.js("document.querySelector('#decoder').value = 'beam'")
        tab.js("document.querySelector('#status').textContent = ''")
        tab.js("document.querySelector('#transcribe').click()")
        status = tab.wait_for("/^(Done|Error)/.test(document.querySelector('#status').textContent) && "
                              "document.querySelector('#status').textContent")
        assert status.startswith("Done") and tab.js("document.querySelector('#transcript').textContent") == beam.text
        tab.js("document.querySelector('#decoder').value = ''")

        tab.js("document.querySelector('#task').value = 'en'")
        tab.js("document.querySelector('#record').click()")
        tab.wait_for("document.querySelector('#status').textContent === 'Recording…'")
        time.sleep(1.5)
        tab.js("document.querySelector('#stop').click()")
        status = tab.wait_for("/^(Done|Error)/.test(document.querySelector('#status').textContent) && "
                              "document.querySelector('#status').textContent")
        assert status.startswith("Done") and "by en" in status, status
        seconds = float(status.split()[1])
        assert 1.0 <= seconds <= 10, status  # the recording reached the server as WAV it could decode


def test_the_page_asks_for_the_key_of_a_server_that_needs_one(browser):
    with serving(create_app(Registry(_two_task_model("layer")), ServerConfig(api_key="secret"))) as url:
        tab = browser(url + "/")
        status = tab.wait_for("document.querySelector('#status') && /API key|ready|Cannot/.test("
                              "document.querySelector('#status').textContent) && "
                              "document.querySelector('#status').textContent")
        assert status == "This server needs an API key: type it in the API key field above."
        assert tab.js("document.activeElement.id") == "key"
        assert tab.js("document.querySelector('#record').disabled") is False  # localhost: the microphone works
        tab.js("document.querySelector('#key').value = 'secret'; "
               "document.querySelector('#key').dispatchEvent(new Event('change'))")
        assert tab.wait_for("document.querySelector('#status').textContent === '2 task(s) ready.'")


def test_the_page_transcribes_the_microphone_live(browser):
    """Live mode: the key goes as a WebSocket subprotocol; partial text shows while the microphone streams, and the
    page's lines are the server's final events (read off the page's WebSocket frames)."""
    with serving(create_app(Registry(_two_task_model("layer")), ServerConfig(api_key="secret"))) as url:
        tab = browser(url + "/")
        tab.send("Network.enable")
        tab.wait_for("document.querySelector('#status') && "
                     "document.querySelector('#status').textContent.startsWith('This server needs an API key')")
        tab.js("document.querySelector('#key').value = 'secret'; "
               "document.querySelector('#key').dispatchEvent(new Event('change'))")
        tab.wait_for("document.querySelector('#status').textContent === '2 task(s) ready.'")
        tab.js("document.querySelector('#task').value = 'es'")

        tab.js("document.querySelector('#key').value = 'wrong'")  # a server error lands in the error area
        tab.js("document.querySelector('#live').click()")
        status = tab.wait_for("document.querySelector('#live').textContent === 'Live' && "
                              "document.querySelector('#status').className === 'error' && "
                              "document.querySelector('#status').textContent")
        assert status == "Error: missing or incorrect API key: send Authorization: Bearer <key>"

        tab.js("document.querySelector('#key').value = 'secret'")
        tab.js("document.querySelector('#live').click()")
        tab.wait_for("document.querySelector('#status').textContent.startsWith('Live with es')")
        shown = "document.querySelector('#transcript').textContent"
        first = tab.wait_for(f"document.querySelector('#transcript .partial').textContent && {shown}")
        tab.wait_for(f"{shown}.length > {len(first)}", timeout=30)  # it grows while the microphone streams
        assert tab.js("document.querySelector('#status').textContent").startswith("Live with es")  # before the stop
        tab.js("document.querySelector('#live').click()")
        status = tab.wait_for("/^(Done|Error)/.test(document.querySelector('#status').textContent) && "
                              "document.querySelector('#status').textContent")
        assert status.startswith("Done") and status.endswith("s live by es."), status
        lines = tab.js("[...document.querySelectorAll('#transcript .final')].map(e => e.textContent)")
        assert tab.js("document.querySelector('#transcript .partial').textContent") == ""
    sent = [json.loads(e["params"]["response"]["payloadData"]) for e in tab.events
            if e["method"] == "Network.webSocketFrameReceived"]
    finals = [e["text"] for e in sent if e["type"] == "final" and e["text"]]
    assert lines and lines == finals
    assert sent[-1]["type"] == "final" and float(status.split()[1]) == pytest.approx(sent[-1]["end"], abs=0.05)

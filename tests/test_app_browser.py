"""`scldm app` in a real browser (issue 23): Debian's Chromium, headless, driven by Playwright
(pointed at the system browser: nothing downloaded). Uploads a text file named .wav (an error
shows in the page), then a recording (faces appear), then records from a microphone (Chromium's
fake capture device playing a voice), and checks that the page fetched nothing from anywhere
but the server. Run with `make test-browser` (it installs chromium when missing).

The server's models are tiny random pipelines unless SCLDM_APP_MODELS names trained ones
([NAME=]DIR,...); SCLDM_SCREENSHOT=PATH saves the page with the faces there (the README's
docs/img/app.png comes from `SCLDM_APP_MODELS=runs/demo/ldm/pipeline
SCLDM_SCREENSHOT=docs/img/app.png make test-browser`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from test_app import models, serve, voices  # noqa: F401

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("SCLDM_CHROMIUM", "/usr/bin/chromium")
# as the workplace's probe starts it: no background traffic, no first-run work, as root
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):  # noqa: F811
    specs = os.environ.get("SCLDM_APP_MODELS")
    if specs:
        chosen = specs.split(",")
    else:
        chosen = [f"scldm={models['scldm']}", f"s2f={models['s2f']}"]
    yield from serve(chosen, tmp_path_factory.mktemp("browser-server"))


def _browser(playwright, *extra: str):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install chromium (make test-browser does)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[*FLAGS, *extra])


def _faces(page, log: Path, n: int) -> None:
    """Wait for n face images in the first gallery (the previous request's are replaced); an
    error in the page or a timeout fails at once with what the page and the server said."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    found = f"document.querySelectorAll('#faces-0 img').length === {n}"
    shown = "document.querySelector('.toast-body') !== null"
    try:
        page.wait_for_function(f"({found}) || ({shown})", timeout=120_000)
    except PlaywrightTimeout as e:  # say what was there instead
        seen = page.evaluate("document.querySelectorAll('#faces-0 img').length")
        pytest.fail(
            f"{n} faces did not appear ({seen} shown; {e}); server log:\n{log.read_text()[-2000:]}"
        )
    if page.evaluate(f"!({found})"):
        toasts = page.locator(".toast-body").all_inner_texts()
        pytest.fail(
            f"an error instead of {n} faces: {toasts}; server log:\n{log.read_text()[-2000:]}"
        )


def _speech_uploaded(page) -> None:
    """Wait until the speech box holds a file on the server (its download link): the Clear
    button shows while a recording is still being encoded and uploaded."""
    page.wait_for_selector("#speech [aria-label='Clear']")
    page.wait_for_selector("#speech a[data-testid='download-link'][href*='file=']")


def test_upload_a_bad_file_then_a_recording_then_speak_into_the_microphone(
    server,
    voices,  # noqa: F811
    tmp_path,
):
    from playwright.sync_api import sync_playwright

    url, log = server
    requested: list[str] = []
    voice = voices["voice.wav"]
    with sync_playwright() as p:
        browser = _browser(
            p,
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={voice}",
        )
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        context.grant_permissions(["microphone"], origin=url.rstrip("/"))
        page = context.new_page()
        page.on("request", lambda r: requested.append(r.url))
        page.goto(url)
        page.wait_for_selector("#generate")
        upload = page.locator("#speech input[type=file]")

        # a text file named .wav: an error in the page, and the page carries on
        upload.set_input_files(str(voices["text.wav"]))
        page.wait_for_selector("#speech [aria-label='Clear']")
        page.click("#generate")
        error = page.locator(".toast-body").first
        error.wait_for(timeout=60_000)
        assert "text.wav: not a readable audio file" in error.inner_text()
        assert "/tmp" not in error.inner_text()  # the server's paths stay private

        # a recording: faces appear, with what the models heard
        page.click("[data-testid='toast-close']")  # dismissed
        error.wait_for(state="detached")
        page.click("#speech [aria-label='Clear']")
        upload.set_input_files(str(voice))
        _speech_uploaded(page)
        page.click("#generate")
        _faces(page, log, 4)
        page.wait_for_selector("#notice :text('Made in')")
        page.wait_for_function(  # every picture drawn (the faces, the spectrogram)
            "[...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)"
            " && document.querySelectorAll('img').length >= 5"
        )
        page.wait_for_timeout(500)  # the audio players' waveforms
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        assert (tmp_path / "app.png").stat().st_size > 20_000
        if shot := os.environ.get("SCLDM_SCREENSHOT"):
            shutil.copyfile(tmp_path / "app.png", shot)

        # the microphone: record 3 s of the fake device's voice, stop, generate with 2 faces
        page.click("#speech [aria-label='Clear']")
        page.click("#speech button[aria-label='Record audio']")
        page.locator("#speech button", has_text="Record").first.click()
        page.wait_for_timeout(3000)
        page.locator("#speech button:visible", has_text="Stop").first.click()
        _speech_uploaded(page)
        faces = page.locator("#faces input[type=number]")
        faces.fill("2")
        faces.press("Enter")
        faces.blur()
        assert faces.input_value() == "2"
        page.click("#generate")
        _faces(page, log, 2)
        browser.close()
    hosts = {urlparse(u).netloc for u in requested if urlparse(u).scheme in ("http", "https")}
    assert hosts == {urlparse(url).netloc}, hosts  # no CDN, fonts or analytics from elsewhere

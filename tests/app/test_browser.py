"""`larp app` in a real browser: headless Chromium uploads a clip, waits for its reconstruction and PSNR,
downloads the token file, generates a sample, sees a bad upload's message, and keeps screenshots.

Needs Debian's `chromium` and `chromium-driver` and the test extra (gradio, selenium); skipped without them."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from larp.data.video_io import read_video
from larp.videos import VideoTokens, reconstruct_video, tokenize_video

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
WAIT = 240  # seconds: a shared CPU can be slow; every wait ends as soon as its condition holds

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs Chromium and its driver (Debian: apt-get install chromium chromium-driver)"),
    pytest.mark.skipif(importlib.util.find_spec("selenium") is None or importlib.util.find_spec("gradio") is None,
                       reason="needs selenium and gradio: pip install -e '.[test]'"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, url: str) -> None:
        self.proc, self.url = proc, url

    def stop(self) -> int:
        """Stop it as `kill` does (SIGTERM) and return its exit status; killed if it takes over 30 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def server(model_dirs, tmp_path):
    """`larp app` with the tiny models on a free local port; stopped after the test."""
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
           "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "larp.cli", "app", "--tokenizer", str(model_dirs["tokenizer"]),
         "--ar_model", str(model_dirs["ar"]), "--fp_model", str(model_dirs["fp"]), "--class_names", "synthetic",
         "--device", "cpu", "--threads", "1", "--port", str(port)],  # one thread, as the tests: the same floats
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    running = Server(proc, url)
    try:
        deadline = time.monotonic() + WAIT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"larp app exited with {proc.returncode}:\n{(tmp_path / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"larp app did not answer within {WAIT} s:\n{(tmp_path / 'server.log').read_text()}")
            time.sleep(1)
        yield running
    finally:
        running.stop()
        log.close()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp_path / 'chromium'}",
                "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # to list the page's requests
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def _text(driver, element_id: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return driver.find_element("id", element_id).text
    except (NoSuchElementException, StaleElementReferenceException):  # Gradio re-renders as results arrive
        return ""


def _playing(driver, element_id: str) -> list[int] | None:
    """[width, height] of the tab's output video once Chromium has decoded a frame of it, else None."""
    return driver.execute_script(
        "const v = document.querySelector(`#${arguments[0]} video`);"
        "return v && v.readyState >= 2 ? [v.videoWidth, v.videoHeight] : null;", element_id)


def _upload(driver, wait, element_id: str, path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"#{element_id} input[type=file]"))).send_keys(str(path))


def test_the_page_reconstructs_generates_and_reports_bad_uploads(server, browser, models, clip_file, bad_file,
                                                                 tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT)
    browser.get(server.url)

    # Reconstruct: the PSNR, token count and bits per pixel of `larp reconstruct` on the same clip.
    _upload(browser, wait, "recon-input", clip_file)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#recon-input video")))
    wait.until(ec.element_to_be_clickable((By.ID, "recon-button"))).click()
    wait.until(lambda d: "PSNR" in _text(d, "recon-status"))
    frames, fps = read_video(clip_file)
    _, psnr = reconstruct_video(models.tokenizer, frames)
    status = _text(browser, "recon-status")
    assert status.startswith(f"PSNR: {psnr:.2f} dB · 192 tokens · 0.0300 bits per pixel · 20 frames of 56x40")
    assert wait.until(lambda d: _playing(d, "recon-output")) == [674, 240]  # side by side, enlarged 6x
    link = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#recon-tokens a"))).get_attribute("href")
    assert link.startswith(server.url)
    with urllib.request.urlopen(link, timeout=60) as response:
        (tmp_path / "downloaded.npz").write_bytes(response.read())
    assert VideoTokens.load(tmp_path / "downloaded.npz").tokens.tolist() == tokenize_video(
        models.tokenizer, frames, spatial="cover").tokens.tolist()
    browser.save_screenshot(str(tmp_path / "reconstruct.png"))

    # Generate: two samples of the first class, shown side by side.
    browser.find_element(By.ID, "tab-generate-button").click()
    wait.until(ec.element_to_be_clickable((By.ID, "gen-button"))).click()
    wait.until(lambda d: "samples of red_square_horizontal" in _text(d, "gen-status"))
    assert wait.until(lambda d: _playing(d, "gen-output")) == [514, 256]
    browser.save_screenshot(str(tmp_path / "generate.png"))

    # Continue: a file that is not a video gets a one-line message naming it, no traceback.
    browser.find_element(By.ID, "tab-continue-button").click()
    _upload(browser, wait, "fp-input", bad_file)
    wait.until(ec.element_to_be_clickable((By.ID, "fp-button"))).click()
    wait.until(lambda d: "Error" in _text(d, "fp-status"))
    assert _text(browser, "fp-status").startswith("Error: cannot read video notes.mp4: ")
    assert "Traceback" not in browser.page_source
    browser.save_screenshot(str(tmp_path / "bad_upload.png"))

    for name in ("reconstruct", "generate", "bad_upload"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing was fetched from anywhere but the app itself (no fonts, analytics or CDN).
    urls = {json.loads(entry["message"])["message"].get("params", {}).get("request", {}).get("url", "")
            for entry in browser.get_log("performance")}
    outside = sorted(u for u in urls if urlparse(u).scheme in ("http", "https", "ws", "wss")
                     and urlparse(u).netloc != urlparse(server.url).netloc)
    assert not outside, outside
    # Stopped as `kill` stops it, the server exits cleanly and removes its files.
    assert server.stop() == 0
    assert not list((tmp_path / "tmp").glob("larp-app-*"))

"""The page of `siamax serve` in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): one file -> the gallery's top matches with thumbnails, two files -> same / different. Saves
a screenshot: into the test's temporary folder, and over docs/serve_page.png only when asked
(``SIAMAX_UPDATE_DOCS=1``: a test run does not change the checkout). Skipped where chromium is missing,
except under CI, where that is a failure."""

import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=900,700"]  # fmt: skip
DOCS_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve_page.png"


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        message = "no chromium / chromedriver (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver  # a test dependency: missing, the install is broken (fail, not skip)

    profile = tempfile.mkdtemp(prefix="siamax-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from siamax.serve.app import create_app
    from siamax.serve.gallery import Gallery
    from tests.test_serve import model_and_gallery

    root = tmp_path_factory.mktemp("browser")
    model, folder = model_and_gallery(root)
    app = create_app(model, Gallery(root / "idx", model.params))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", folder
    server.should_exit = True
    thread.join(10)


@pytest.mark.slow
def test_the_page_identifies_one_file_and_verifies_two(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, folder = server
    browser.get(url)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: "gallery of 12 items" in d.find_element(By.ID, "info").text)
    browser.find_element(By.ID, "files").send_keys(str(folder / "c3" / "1.png"))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#matches .m")) == 5)
    wait.until(lambda d: all(i.get_attribute("src").startswith("blob:") and i.get_property("naturalWidth") > 0
                             for i in d.find_elements(By.CSS_SELECTOR, "#matches img")))  # fmt: skip
    assert "top 5" in browser.find_element(By.ID, "verdict").text
    shot = tmp_path / "serve_page.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes().startswith(b"\x89PNG")
    if os.environ.get("SIAMAX_UPDATE_DOCS") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)
    files = browser.find_element(By.ID, "files")
    browser.execute_script("arguments[0].value = ''", files)  # chromedriver adds to a multiple input's files
    files.send_keys(f"{folder / 'c0' / '0.png'}\n{folder / 'c1' / '0.png'}")
    wait.until(lambda d: "p = " in d.find_element(By.ID, "verdict").text)
    verdict = browser.find_element(By.ID, "verdict").text
    assert verdict.startswith(("same", "different")) and "threshold 0.500" in verdict

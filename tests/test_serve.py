"""`vatt serve`: the search page in a real headless browser (Debian's chromium + chromedriver), and its server."""
import http.client
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

import vatt
from vatt.cli import main
from vatt.data.sample_data import describe_clip
from vatt.data.text import WordTokenizer
from vatt.index import Index, build_index

from tests.test_index import write_clip

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    model = vatt.build_model("tx_fac_tiny").eval()
    model.tokenizer = WordTokenizer.build([describe_clip(i).caption for i in range(64)], max_size=1000)
    vatt.save(model, root / "model")
    for i in range(3):
        write_clip(root / "media" / f"clip{i}.mp4", i, seconds=4.0)
    build_index(vatt.load(root / "model"), [root / "media"], root / "idx", model_path=str(root / "model"))
    return root


@pytest.fixture(scope="module")
def server(index_dir):
    import uvicorn

    from vatt.index.serve import make_app

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(make_app(Index.open(index_dir / "idx")), host="127.0.0.1", port=port,
                                       log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"http://127.0.0.1:{port}", port
    srv.should_exit = True
    thread.join(10)


def _get(port: int, path: str, headers=None) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers=headers or {})  # sent as is: no client-side clean-up of "../"
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body, {k.lower(): v for k, v in r.getheaders()}


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI") == "true":
            pytest.fail("chromium and chromedriver must be installed in CI (scripts/test.sh installs them)")
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--autoplay-policy=no-user-gesture-required", "--mute-audio"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait(predicate, timeout=30.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_page_searches_and_plays_a_moment_from_its_start(server, browser, index_dir):
    from selenium.webdriver.common.by import By

    url, _ = server
    browser.get(url)
    assert "3 files" in browser.find_element(By.TAG_NAME, "header").text
    box = browser.find_element(By.ID, "query")
    box.send_keys("a green ball going right")
    browser.find_element(By.CSS_SELECTOR, "#text-form button").click()
    cards = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".card"), what="result cards")
    assert all(c.find_element(By.TAG_NAME, "img").get_attribute("naturalWidth") != "0" for c in cards)
    card = max(cards, key=lambda c: float(c.get_attribute("data-start")))  # the latest start: a real seek
    start = float(card.get_attribute("data-start"))
    assert start > 0
    card.click()
    current = _wait(lambda: browser.execute_script(
        "const v = document.getElementById('video');"
        "return v.readyState >= 1 && !v.seeking && v.currentTime > 0 ? v.currentTime : null;"), what="the video to seek")
    assert abs(current - start) < 1.0
    assert browser.execute_script("return document.getElementById('video').error") is None

    # search by an uploaded sound
    sound = write_clip(index_dir / "query.mp4", 2 + 64, seconds=4.0)
    browser.execute_script("document.getElementById('results').textContent = ''")
    browser.find_element(By.ID, "sound").send_keys(str(sound))
    browser.find_element(By.CSS_SELECTOR, "#audio-form button").click()
    cards = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, ".card"), what="results of the sound")
    assert len(cards) >= 1 and browser.find_element(By.ID, "message").text == ""

    # a bad upload shows the reason on the page
    junk = index_dir / "junk.wav"
    junk.write_bytes(b"RIFF\x00\x00 definitely not audio")
    browser.find_element(By.ID, "sound").send_keys(str(junk))
    browser.find_element(By.CSS_SELECTOR, "#audio-form button").click()
    msg = _wait(lambda: browser.find_element(By.ID, "message").text.strip() not in ("", "searching...")
                and browser.find_element(By.ID, "message").text, what="the error message")
    assert "junk.wav is not a sound file" in msg


def test_only_files_of_the_index_are_served(server, index_dir):
    _, port = server
    files = sorted(str(p) for p in (index_dir / "media").glob("clip*.mp4"))
    status, body, headers = _get(port, "/media/1", {"Range": "bytes=100-199"})
    assert status == 206 and headers["content-range"] == f"bytes 100-199/{os.path.getsize(files[1])}"
    assert body == Path(files[1]).read_bytes()[100:200]
    status, body, _ = _get(port, "/media/0")
    assert status == 200 and body == Path(files[0]).read_bytes()
    for path in ("/media/3", "/media/-1", "/media/../../../../etc/passwd", "/media/..%2F..%2Fetc%2Fpasswd",
                 "/media/" + str(index_dir / "query.mp4"), "/media/", "/media"):
        status, body, _ = _get(port, path)
        assert status in (404, 422), (path, status)
        assert b"root:" not in body
    status, _, _ = _get(port, "/media/0", {"Range": "bytes=999999999-"})
    assert status == 416


def test_bad_queries_get_a_clear_answer(server):
    _, port = server
    status, body, _ = _get(port, "/api/search?q=%20%20")
    assert status == 400 and b"the text query is empty" in body
    status, body, _ = _get(port, "/api/search?q=ball&k=lots")
    assert status == 400 and b"k must be a whole number" in body
    status, body, _ = _get(port, "/api/search?q=ball&in=smell")
    assert status == 400 and b"in must be" in body


def test_a_port_in_use_is_a_clear_message(index_dir, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", str(index_dir / "idx"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err and "Traceback" not in err

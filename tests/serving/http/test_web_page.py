"""The web page at ``/`` in a real browser: Debian's headless Chromium driven by Selenium
through the system chromedriver (/usr/bin/chromedriver; Selenium Manager never runs, so
nothing is downloaded). A live server with an API key: the page and its files load without
the key, the API's 401 shows as the API words it, then with the key typed in the page lists
the models, uploads a WAV and draws the four views.

The screenshot is kept under the test's tmp dir; ``DIFFRES_WEB_SCREENSHOT=<path>`` copies it
there too (docs/images/web-page.png is made that way). Skipped without chromium/chromedriver
unless DIFFRES_REQUIRE_SYSTEM_TOOLS=1 (then it fails)."""

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import require_tool
from tests.serving.conftest import LABELS, sine
from tests.serving.harness import LiveServer, wav_bytes

KEY = "web-page-test-key"
CHARTS = ["chart-mel", "chart-scores", "chart-compressed", "chart-classes"]


@pytest.fixture
def browser(tmp_path):
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,1500", f"--user-data-dir={tmp_path / 'profile'}",
                # a generated microphone (a beep), granted without a prompt: live mode
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        options.add_argument(arg)
    # An explicit driver path: Selenium Manager (which would download one) is not used.
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_web_page_classifies_an_upload(browser, model_store, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("DIFFRES_API_KEY", KEY)
    server = LiveServer(model_store, tmp_path / "server.log",
                        models="kws12-diffres,kws12-avgpool", intra_op_threads=1)
    try:
        server.wait_ready()
        for path in ("/", "/static/app.js", "/static/app.css"):  # public without the key
            assert httpx.get(server.base + path, timeout=30).status_code == 200, path
        assert httpx.get(server.base + "/models", timeout=30).status_code == 401

        wait = WebDriverWait(browser, 60)
        browser.get(server.base + "/")
        error = browser.find_element(By.ID, "error")
        wait.until(lambda d: error.is_displayed() and error.text)
        assert error.text == "401 unauthorized: a valid API key is required"

        key = browser.find_element(By.ID, "api-key")
        key.send_keys(KEY)
        browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", key)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) == 2)
        assert not error.is_displayed()
        assert browser.execute_script("return localStorage.getItem('diffres.apiKey')") == KEY
        assert browser.find_element(By.ID, "model").get_attribute("value") == "kws12-diffres"

        wav = tmp_path / "clip.wav"
        wav.write_bytes(wav_bytes(sine(1.5)))
        browser.find_element(By.ID, "file").send_keys(str(wav))
        analyse = browser.find_element(By.ID, "analyse")
        wait.until(lambda d: analyse.is_enabled())
        analyse.click()
        top = browser.find_element(By.ID, "top-label")
        wait.until(lambda d: top.text != "–" or error.text)
        assert not error.text, error.text
        assert top.text.split(" ")[0] in LABELS
        wait.until(lambda d: all(d.find_element(By.ID, c).get_attribute("data-rendered") == "1"
                                 for c in CHARTS))
        for chart in CHARTS:  # pixels were drawn, not just flagged
            drawn = browser.execute_script(
                "const c = document.getElementById(arguments[0]);"
                "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;",
                chart)
            assert drawn > 1000, chart
        from selenium.webdriver.common.action_chains import ActionChains

        tooltip = browser.find_element(By.ID, "tooltip")
        for chart, words in [("chart-scores", "score"), ("chart-compressed", "spans")]:
            ActionChains(browser).move_to_element(browser.find_element(By.ID, chart)).perform()
            wait.until(lambda d, w=words: tooltip.is_displayed() and w in tooltip.text)
            assert " s" in tooltip.text  # times in seconds
        caption = browser.find_element(By.ID, "cap-compressed").text
        assert "learnt time axis" in caption
        live = browser.find_element(By.ID, "live")  # shown only if the server lists WS /stream
        listed = httpx.get(server.base + "/ui/features", headers={"X-API-Key": KEY},
                           timeout=30).json()["stream"]
        assert live.is_displayed() == listed
        if listed:  # live mode: the microphone streams, the server hears it, "end" closes it
            toggle = browser.find_element(By.ID, "live-toggle")
            log = browser.find_element(By.ID, "live-log")
            toggle.click()
            wait.until(lambda d: "listening" in log.text or ":" in log.text)
            assert "listening (kws12-diffres" in log.text, log.text

            def streamed_seconds() -> float:
                metrics = httpx.get(server.base + "/metrics", headers={"X-API-Key": KEY},
                                    timeout=30).text
                return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                           if line.startswith("diffres_stream_audio_seconds_total"))

            wait.until(lambda d: streamed_seconds() >= 1.5)
            toggle.click()
            wait.until(lambda d: "ended:" in log.text)

        shot = tmp_path / "web-page.png"
        assert browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("DIFFRES_WEB_SCREENSHOT"):
            target = Path(os.environ["DIFFRES_WEB_SCREENSHOT"])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, target)
    finally:
        server.stop()


def test_page_is_public_and_the_api_keyed(model_store):
    """Without a browser: with ``api_key`` set, the page and its files load without it;
    /ui/features and the API still need it; a path that only starts like a static file
    reaches no route."""
    from fastapi.testclient import TestClient

    from service.serving.http.app import create_app
    from tests.serving.conftest import make_settings

    app = create_app(make_settings(model_store, api_key=KEY))
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "/static/app.js" in page.text and "http" not in page.text.split("<body>")[1]
        for path in ("/static/app.js", "/static/app.css"):
            assert client.get(path).status_code == 200, path
        for path in ("/ui/features", "/models", "/static/../models", "/static/%2e%2e/models"):
            r = client.get(path)
            assert r.status_code in (401, 404), (path, r.status_code)
            assert "models" not in r.text or r.status_code == 401
        assert client.get("/ui/features", headers={"X-API-Key": KEY}).json()["stream"] in (
            True, False)


def test_static_files_ship_in_the_package():
    import tomllib

    from service.serving.http.routes.web_ui import STATIC_DIR

    root = Path(__file__).resolve().parents[3]
    data = tomllib.loads((root / "pyproject.toml").read_text())
    assert data["tool"]["setuptools"]["package-data"]["service.serving.http"] == ["static/*"]
    assert {p.name for p in STATIC_DIR.iterdir()} >= {"index.html", "app.js", "app.css"}
    for name in ("index.html", "app.js", "app.css"):  # no CDN: nothing loads from elsewhere
        text = (STATIC_DIR / name).read_text()
        assert "https://" not in text and "//cdn" not in text, name

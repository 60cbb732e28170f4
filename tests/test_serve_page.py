"""The page at `/` in a real headless browser: Debian's chromium driven by selenium
through chromedriver. A `facekd serve` child process on 127.0.0.1 (with an API key, so
the page's key field is exercised); the test enrols an LFW person through the page's
form, identifies another photo of them, and checks what the page shows.

Skips, saying why, without chromium/chromedriver (apt-get install chromium
chromium-driver), selenium, the shared LFW data or the YuNet model.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from serve_helpers import running_server

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "weights" / "student5_mobilefacenet_casia.onnx"
# docs/images/serve-page.png is made with FACEKD_PAGE_SCREENSHOT=docs/images/serve-page.png;
# otherwise the screenshot goes to the test's temporary directory.
SCREENSHOT_ENV = "FACEKD_PAGE_SCREENSHOT"
KEY = "page-test-key-0123456789"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1100,1300")
PEOPLE = {"Colin_Powell": 2, "Serena_Williams": 2}  # enrolled photos each; the next photo is the probe


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = _chromium()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="facekd-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # The driver named explicitly: selenium never looks one up or downloads one.
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("page")
    (tmp / "keys").write_text(f"{KEY}\n")
    args = ["--model", str(MODEL), "--gallery", str(tmp / "g.sqlite"), "--api-key-file", str(tmp / "keys"),
            "--detector", "yunet"]
    with running_server(tmp, args) as proc:
        yield proc


def _wait(driver, timeout: float):
    """A wait that retries when the page re-renders an element between finding and reading it."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))


def _texts(driver, selector: str) -> list[str]:
    """The rendered texts of every element matching `selector`, read in one step of the page's script
    (reading them one by one races the page re-rendering its tables)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => e.innerText)", selector)


def _wait_text(driver, element_id: str, timeout: float = 60.0) -> str:
    _wait(driver, timeout).until(lambda d: d.find_element("id", element_id).text.strip())
    return driver.find_element("id", element_id).text


def test_static_files_are_served_with_a_strict_policy(server):
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and 'src="/static/page.js"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http" not in page.text.replace('href="/docs"', "")  # nothing from elsewhere
    assert httpx.get(f"{server.url}/static/page.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{server.url}/static/..%2Fapp.py").status_code == 404
    assert httpx.post(f"{server.url}/v1/align", files={"photo": ("a.jpg", b"x")}).status_code == 401


def test_enrol_and_identify_through_the_page(browser, server, lfw_dir, tmp_path):
    browser.get(server.url + "/")
    assert "needs an API key" in _wait_text(browser, "health")
    browser.find_element("id", "api-key").send_keys(KEY)

    probes = {}
    for name, n in PEOPLE.items():
        photos = sorted((lfw_dir / name).glob("*.jpg"))
        probes[name] = photos[n]
        browser.find_element("id", "enrol-name").send_keys(name)
        browser.find_element("id", "enrol-photos").send_keys("\n".join(str(p) for p in photos[:n]))
        browser.find_element("id", "enrol-submit").click()
        _wait(browser, 120).until(
            lambda d: "Enrolled" in d.find_element("id", "enrol-status").text
            or "error" in d.find_element("id", "enrol-status").get_attribute("class"))
        status = browser.find_element("id", "enrol-status").text
        assert status.startswith(f"Enrolled {name}") and f"{n} face(s)" in status, status

    _wait(browser, 30).until(lambda d: len(_texts(d, "#people tbody td.name")) == 2)
    listed = _texts(browser, "#people tbody td.name")
    assert listed == list(PEOPLE)

    name = "Colin_Powell"
    browser.find_element("id", "identify-photo").send_keys(str(probes[name]))
    browser.find_element("id", "identify-submit").click()
    _wait(browser, 120).until(
        lambda d: d.find_element("id", "result").is_displayed()
        or "error" in d.find_element("id", "identify-status").get_attribute("class"))
    assert browser.find_element("id", "identify-status").text == ""
    assert browser.find_element("id", "identity").text == name

    assert _texts(browser, "#matches tbody td.name") == [name, "Serena_Williams"]
    scores = [float(s) for s in browser.execute_script(
        "return Array.from(document.querySelectorAll('#matches tbody td.score'), e => e.dataset.score)")]
    assert all(-1.0 <= s <= 1.0 for s in scores) and scores[0] > scores[1], scores

    crop = browser.find_element("id", "crop")
    src = crop.get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", crop)
    assert size == [int(crop.get_attribute("data-width")), int(crop.get_attribute("data-height"))]
    assert size == [96, 112]  # the model's template: MobileFaceNet's 112 x 96 crop

    shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "serve-page.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_a_name_holding_html_is_shown_as_text(browser, server, lfw_dir):
    """Names are user input: the page must insert them as text, never as markup."""

    name = '<img src=x onerror="document.title=\'xss\'"><b>Aaron</b>'
    photos = sorted((lfw_dir / "Aaron_Peirsol").glob("*.jpg"))
    r = httpx.post(f"{server.url}/v1/people", data={"name": name}, headers={"X-API-Key": KEY}, timeout=120,
                   files={"photos": (photos[0].name, photos[0].read_bytes(), "image/jpeg")})
    assert r.status_code == 201, r.text
    browser.get(server.url + "/")
    key = browser.find_element("id", "api-key")
    key.clear()
    key.send_keys(KEY)
    browser.find_element("id", "people-refresh").click()
    _wait(browser, 30).until(
        lambda d: name in _texts(d, "#people tbody td.name"))
    browser.find_element("id", "identify-photo").send_keys(str(photos[1]))
    browser.find_element("id", "identify-submit").click()
    _wait(browser, 120).until(
        lambda d: d.find_element("id", "result").is_displayed()
        or "error" in d.find_element("id", "identify-status").get_attribute("class"))
    assert browser.find_element("id", "identity").text == name
    assert browser.find_elements("css selector", "main img:not(#crop), main b") == []
    assert browser.title == "facekd: who is this?"

"""The web chat page in a real headless browser: Debian's chromium driven by selenium (chromedriver).

Type a message and see the reply stream in, keep the conversation across turns, stop a reply (the
server cancels it), and use the page with an API key. (The README's screenshot comes from
tools/chat_page_screenshot.py, the same browser on a real model: `make screenshot`.)
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from serve_support import running_server, stop, tiny_chat_model  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
KEY = "page-key"

# Only where the browser is missing (a machine set up without `apt-get install chromium chromium-driver`);
# on CI and in the dev environment it is installed, and CI=true fails rather than skips.
if not ((Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()) or shutil.which("chromedriver")):
    if os.environ.get("CI"):
        raise RuntimeError("the browser tests need Debian's chromium and chromium-driver: see the README")
    pytest.skip(
        "chromium + chromium-driver are not installed (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model_dir = tiny_chat_model(tmp_path_factory.mktemp("page"), max_seq_len=4096, n_embd=64)
    with running_server(model_dir, "--api-key", KEY, "--served-model-name", "danlu-tiny") as s:
        yield s
        assert stop(s, signal.SIGINT) == 0  # Ctrl-C is a graceful stop too


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1000,700",
        "--disable-gpu",
        "--no-first-run",
    ):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)  # no driver download
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def text(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def replies(driver) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")]


def running(server) -> float:
    line = next(
        x
        for x in httpx.get(server.url + "/metrics").text.splitlines()
        if x.startswith("danlu_running_requests ")
    )
    return float(line.split()[1])


def send(driver, message: str) -> None:
    box = driver.find_element(By.ID, "input")
    box.send_keys(message)
    driver.find_element(By.ID, "send").click()


def test_the_page_streams_a_reply_keeps_the_conversation_and_stops(server, browser):
    wait = WebDriverWait(browser, 30, poll_frequency=0.05)
    browser.get(server.url + "/")
    wait.until(lambda d: "enter the API key" in text(d, "#model"))  # the server wants a key
    assert browser.find_element(By.ID, "settings").get_attribute("open")  # and the page says where
    key = browser.find_element(By.ID, "api-key")
    key.send_keys(KEY)
    browser.find_element(By.ID, "max-tokens").send_keys("40")
    browser.find_element(By.ID, "input").click()  # the key field's change event fires
    wait.until(lambda d: text(d, "#model").startswith("danlu-tiny"))

    # a reply streams in: it is seen partly written (the cursor class on) before it is complete
    send(browser, "hello there")
    wait.until(lambda d: text(d, "#status").startswith("done"))
    first = replies(browser)[0]
    assert len(first) > 10 and "tokens/s" in text(browser, "#stats")
    assert text(browser, ".msg.user") == "hello there"

    # a second turn: the conversation so far goes with it (the server's prompt cache holds it)
    send(browser, "how are you?")
    wait.until(lambda d: text(d, "#status").startswith("done") and len(replies(d)) == 2)
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".msg.user")] == [
        "hello there",
        "how are you?",
    ]
    assert replies(browser)[0] == first

    # a long reply, stopped while it streams: the text stops growing and the server frees the slot
    limit = browser.find_element(By.ID, "max-tokens")
    limit.clear()  # empty: the rest of the context, thousands of tokens
    send(browser, "tell me a long story")
    wait.until(lambda d: len(replies(d)) == 3 and len(replies(d)[2]) > 20)
    assert "streaming" in browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[2].get_attribute("class")
    browser.find_element(By.ID, "stop").click()
    wait.until(lambda d: text(d, "#status") == "stopped")
    stopped = replies(browser)[2]
    assert stopped.endswith("(stopped)")
    time.sleep(0.5)
    assert replies(browser)[2] == stopped
    assert WebDriverWait(browser, 20).until(lambda d: running(server) == 0)
    assert (
        browser.find_element(By.ID, "send").is_enabled()
        and not browser.find_element(By.ID, "stop").is_enabled()
    )


def test_a_wrong_key_shows_the_servers_error(server, browser):
    wait = WebDriverWait(browser, 30, poll_frequency=0.05)
    browser.get(server.url + "/")
    browser.execute_script("localStorage.setItem('danlu-api-key', 'wrong'); location.reload();")
    wait.until(lambda d: "enter the API key" in text(d, "#model"))
    send(browser, "hi")
    wait.until(lambda d: text(d, "#status") == "error")
    assert "401" in replies(browser)[-1] and "API key" in replies(browser)[-1]
    browser.execute_script("localStorage.removeItem('danlu-api-key');")

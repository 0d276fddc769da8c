"""The README's picture of the chat page: `danlu serve MODEL` on a free loopback port, a short
conversation typed into the page in headless chromium (Debian's, through its chromedriver), a PNG.

    .venv/bin/python tools/chat_page_screenshot.py runs/smollm2 docs/chat-page.png
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

QUESTIONS = ("What is the capital of France?", "And what is it famous for? Answer in two sentences.")


def start_server(model: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "danlu.cli", "serve", model, "--port", "0"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    assert proc.stderr is not None
    for line in proc.stderr:  # the server logs its address once it listens
        if "listening on http://" in line:
            return proc, line.rsplit("listening on ", 1)[1].strip()
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit(f"danlu serve {model} did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a chat model dir, e.g. runs/smollm2 (danlu import smollm2-135m-instruct)")
    ap.add_argument("out", nargs="?", default="docs/chat-page.png")
    ap.add_argument("--max-tokens", type=int, default=60)
    args = ap.parse_args()
    proc, url = start_server(args.model)
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,640"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService("/usr/bin/chromedriver"))
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 120, poll_frequency=0.1)
        wait.until(lambda d: "context" in d.find_element(By.ID, "model").text)
        driver.find_element(By.CSS_SELECTOR, "#settings summary").click()
        driver.find_element(By.ID, "temperature").clear()
        driver.find_element(By.ID, "temperature").send_keys("0")
        driver.find_element(By.ID, "max-tokens").send_keys(str(args.max_tokens))
        driver.find_element(By.CSS_SELECTOR, "#settings summary").click()
        for i, question in enumerate(QUESTIONS, 1):
            driver.find_element(By.ID, "input").send_keys(question)
            driver.find_element(By.ID, "send").click()
            wait.until(
                lambda d, i=i: (
                    len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == i
                    and d.find_element(By.ID, "status").text.startswith("done")
                )
            )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()

"""Drive `app.py` in Debian's headless Chromium through selenium and the system chromedriver (nothing is downloaded).

    python -m tests.browser.space_demo --model DIR --out docs/space_demo.png

starts `app.py --model DIR` on a free local port, clicks the first rendered example, asks it and saves a screenshot:
how `docs/space_demo.png` is made. `tests/test_app.py` drives the page with the same functions.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Offline and quiet: no QUIC or proxy, no first-run pages, background or component-update traffic, no sync.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--disable-dev-shm-usage",  # containers give /dev/shm 64 MB, too little for a renderer
    "--window-size=1280,1000",
)
APP_START_TIMEOUT = 120  # importing torch and gradio and loading the model, on a busy 2-core machine
ANSWER_TIMEOUT = 60


# Straight to the loopback server, whatever proxy the environment names.
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(url: str, timeout: float = 10) -> bytes:
    with _LOOPBACK.open(url, timeout=timeout) as response:
        return response.read()


def browser_available() -> bool:
    return CHROMIUM.is_file() and CHROMEDRIVER.is_file()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_app(model: str | Path, log_path: str | Path) -> Iterator[str]:
    """`python app.py --model MODEL` on 127.0.0.1 and a free port, offline; yields its URL, stops it afterwards."""
    port = free_port()
    environment = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "app.py", "--model", str(model), "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}/"
    with open(log_path, "w") as log:
        app = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + APP_START_TIMEOUT
        while True:
            if app.poll() is not None:
                raise RuntimeError(f"app.py exited with {app.returncode}:\n{Path(log_path).read_text()[-4000:]}")
            try:
                fetch(url, timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"app.py did not serve {url} within {APP_START_TIMEOUT} s") from None
                time.sleep(0.5)
        yield url
    finally:
        app.terminate()
        try:
            app.wait(timeout=10)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait()


@contextmanager
def chromium(user_data_dir: str | Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    # An explicit driver path: selenium then never runs selenium-manager, which would download a driver.
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, timeout: float = ANSWER_TIMEOUT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def _element(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def open_page(driver, url: str) -> None:
    driver.get(url)
    _wait(driver, lambda d: d.find_elements("css selector", "#ask"))


def upload(driver, rgb_path: str | Path, depth_path: str | Path | None = None) -> None:
    """Choose the files as a user would, and wait until the page shows them (uploaded to the server)."""
    _element(driver, "#rgb input[type=file]").send_keys(str(rgb_path))
    _wait(driver, lambda d: d.find_elements("css selector", "#rgb img[src]"))
    if depth_path is not None:
        _element(driver, "#depth input[type=file]").send_keys(str(depth_path))
        # The download link appears once the server holds the file.
        _wait(driver, lambda d: d.find_elements("css selector", f'#depth a[download="{Path(depth_path).name}"]'))


def ask(driver, question: str | None = None) -> dict:
    """Type `question` (when given), press Ask and wait for the reply; returns what the page shows.

    The depth note is filled on every successful reply, so it marks the end of one; an error shows a toast instead.
    """
    if question is not None:
        box = _element(driver, "#question textarea")
        box.clear()
        box.send_keys(question)
    _element(driver, "#ask").click()

    def error_texts(d) -> list[str]:  # a toast is in the page a moment before its text is
        return [text for toast in d.find_elements("css selector", ".toast-body") if (text := toast.text.strip())]

    _wait(driver, lambda d: _element(d, "#depth_note").text.strip() or error_texts(d))
    colour_maps = driver.find_elements("css selector", "#depth_view img[src]")
    return {
        "answer": _element(driver, "#answer textarea").get_property("value"),
        "depth_note": _element(driver, "#depth_note").text,
        "colour_map_url": colour_maps[0].get_attribute("src") if colour_maps else None,
        "errors": error_texts(driver),
    }


def click_example(driver, index: int) -> dict:
    """Click row `index` of the examples table; returns the question and exact answer it put on the page."""
    rows = driver.find_elements("css selector", "#examples tbody tr")
    rows[index].click()
    _wait(driver, lambda d: _element(d, "#question textarea").get_property("value"))
    _wait(driver, lambda d: d.find_elements("css selector", "#rgb img[src]"))
    return {
        "question": _element(driver, "#question textarea").get_property("value"),
        "exact_answer": _element(driver, "#exact_answer textarea").get_property("value"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder for app.py")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "space_demo.png")
    parser.add_argument("--example", type=int, default=0, help="row of the examples table to ask")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="space_demo_") as scratch:
        with running_app(args.model, Path(scratch) / "app.log") as url, chromium(Path(scratch) / "chromium") as driver:
            open_page(driver, url)
            example = click_example(driver, args.example)
            reply = ask(driver)
            driver.save_screenshot(str(args.out))
    print({**example, **reply, "screenshot": str(args.out)})


if __name__ == "__main__":
    main()

"""A real browser on the page: headless Chromium (Debian's chromium + chromium-driver, via selenium)
fills a prompt, presses Generate, waits for the image and saves the README's screenshot."""

import shutil
import tempfile
from pathlib import Path

import pytest

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "serve.png"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1000"]


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("no chromium/chromedriver on PATH: `make test-browser` installs Debian's chromium and "
                    "chromium-driver where apt-get may run")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    with tempfile.TemporaryDirectory() as profile:
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        chrome = webdriver.Chrome(service=Service(driver), options=options)
        try:
            yield chrome
        finally:
            chrome.quit()


@pytest.mark.browser
def test_page_generates_an_image_in_a_real_browser(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    wait = WebDriverWait(browser, 120)
    prompt = wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea")))
    prompt.send_keys("a photo of a red circle")
    browser.find_element(By.CSS_SELECTOR, "#generate").click()
    image = wait.until(ready.visibility_of_element_located((By.CSS_SELECTOR, "#gallery img")))
    wait.until(lambda _: browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image))
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
    assert image.size["width"] > 0 and image.size["height"] > 0
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 32  # the model's image

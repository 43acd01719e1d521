"""The web page in a real browser: Debian's headless Chromium, driven through ChromeDriver, over a real server.

Sign in with a key, upload photos, watch the job's progress to the end, pick the concept, write a prompt, generate,
move the beta slider and see the images change, and find them in the gallery. A missing browser fails (never skips):
`make setup` installs it.
"""

import shutil

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

from perfusion.service.store import Store
from perfusion.service.testing import headless_chromium
from perfusion.testing import write_concept_images

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    assert shutil.which(CHROMEDRIVER) and shutil.which(CHROMIUM), "Chromium is missing: run make setup"
    driver = headless_chromium(tmp_path / "profile")
    yield driver
    driver.quit()


def images_shown(driver) -> list[str]:
    return [node.get_attribute("src") for node in driver.find_elements(By.CSS_SELECTOR, "#results img")]


def test_the_whole_flow_in_a_browser(running, browser, tmp_path):
    key = Store(running.config.database).add_user("browser-user")
    wait = WebDriverWait(browser, 180)
    browser.get(running.url + "/")
    browser.find_element(By.ID, "key").send_keys(key)
    browser.find_element(By.ID, "signin").click()
    wait.until(ready.text_to_be_present_in_element((By.ID, "whoami"), "browser-user"))

    folder = write_concept_images(tmp_path / "photos", count=3)
    browser.find_element(By.ID, "token").send_keys("<webdisc>")
    browser.find_element(By.ID, "supercategory").send_keys("ball")
    browser.find_element(By.ID, "steps").send_keys("4")
    browser.find_element(By.ID, "photos").send_keys("\n".join(str(path) for path in sorted(folder.iterdir())))
    browser.find_element(By.ID, "train").click()
    wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, ".job[data-state=done]"))
    assert "4/4" in browser.find_element(By.CSS_SELECTOR, ".job[data-state=done]").text

    pick = wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "#concepts input[value='<webdisc>']")))
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("a photo of")
    pick.click()
    assert prompt.get_attribute("value") == "a photo of <webdisc>"
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda driver: driver.find_element(By.ID, "results").get_attribute("data-state") == "done")
    first = images_shown(browser)
    assert len(first) == 2 and all(src.startswith("data:image/png;base64,") for src in first)

    slider = browser.find_element(By.ID, "beta")
    slider.send_keys(Keys.HOME)  # beta 0: all concept; fires change, which generates again
    wait.until(lambda driver: driver.find_element(By.ID, "results").get_attribute("data-beta") == "0")
    assert browser.find_element(By.ID, "beta-value").text == "0.00"
    assert images_shown(browser) != first

    wait.until(lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "#gallery img")) >= 4)
    captions = [node.text for node in browser.find_elements(By.CSS_SELECTOR, "#gallery figcaption")]
    assert any("beta 0" in text for text in captions) and any("beta 0.7" in text for text in captions)
    assert not browser.find_element(By.ID, "error").text

"""The web page's screenshot for the README: the embedded model served, a concept trained from the shipped example
photos through the page, and generations at two betas, in headless Debian Chromium.

Usage: python benchmarks/serve_screenshot.py [--example mycat] [--steps 60] [--out docs/sheets/serve-page.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from perfusion.service.config import ServiceConfig
from perfusion.service.store import Store
from perfusion.service.testing import RunningService, headless_chromium
from perfusion.world.model_path import default_model_path

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "perfusion" / "world" / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", default="mycat")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--prompt", default="a photo of {} on the beach")
    parser.add_argument("--out", default="docs/sheets/serve-page.png")
    args = parser.parse_args()
    folder = EXAMPLES / args.example
    about = json.loads((folder / "concept.json").read_text())
    token, supercategory = about.get("token", f"<{args.example}>"), about.get("supercategory", "cat")
    with tempfile.TemporaryDirectory() as data:
        config = ServiceConfig(model=str(default_model_path()), data=Path(data))
        with RunningService(config) as running:
            key = Store(config.database).add_user("demo")
            driver = headless_chromium(Path(data) / "profile", "1280,1000")
            try:
                wait = WebDriverWait(driver, 1800)
                driver.get(running.url + "/")
                driver.find_element(By.ID, "key").send_keys(key)
                driver.find_element(By.ID, "signin").click()
                wait.until(lambda d: "demo" in d.find_element(By.ID, "whoami").text)
                driver.find_element(By.ID, "token").send_keys(token)
                driver.find_element(By.ID, "supercategory").send_keys(supercategory)
                driver.find_element(By.ID, "steps").send_keys(str(args.steps))
                photos = sorted(str(path) for path in folder.glob("*.png"))
                driver.find_element(By.ID, "photos").send_keys("\n".join(photos))
                driver.find_element(By.ID, "train").click()
                wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".job[data-state=done]"))
                prompt = driver.find_element(By.ID, "prompt")
                prompt.clear()
                prompt.send_keys(args.prompt.format(token))
                pick = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"#concepts input[value='{token}']"))
                pick.click()
                driver.find_element(By.ID, "generate").click()
                wait.until(lambda d: d.find_element(By.ID, "results").get_attribute("data-state") == "done")
                slider = driver.find_element(By.ID, "beta")
                for _ in range(6):
                    slider.send_keys(Keys.ARROW_LEFT)  # beta 0.70 -> 0.40, each step a generation
                wait.until(lambda d: d.find_element(By.ID, "results").get_attribute("data-beta") == "0.4")
                wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gallery img")) >= 4)
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(args.out)
            finally:
                driver.quit()
    print(f"written {args.out}")


if __name__ == "__main__":
    main()

"""An annotator labels a record in Argilla's web UI (headless Debian chromium), and the SDK reads it back.

Needs the ``chromium`` and ``chromium-driver`` Debian packages and the ``selenium`` package;
when they are missing this test fails (it is part of the suite, not optional).
"""

from __future__ import annotations

import shutil
import time

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--no-first-run", "--disable-sync", "--window-size=1400,1000",
]


def _browser(profile_dir):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    assert chromium and driver, "headless Chromium is missing; fix: apt-get install -y chromium chromium-driver"
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    for arg in [*CHROMIUM_ARGS, f"--user-data-dir={profile_dir}"]:
        opts.add_argument(arg)
    opts.binary_location = chromium
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver))


def sign_in(browser, argilla_server):
    """Sign in as the annotator; returns a 60-second ``WebDriverWait`` on the browser."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(f"{argilla_server.url}/sign-in")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=password]")))
    browser.find_element(By.CSS_SELECTOR, "input[type=text]").send_keys(argilla_server.annotator)
    browser.find_element(By.CSS_SELECTOR, "input[type=password]").send_keys(argilla_server.annotator_password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda b: "/sign-in" not in b.current_url)
    return wait


def test_annotator_labels_a_record_in_the_web_ui(argilla_server, tmp_path):
    import argilla as rg
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    client = argilla_server.client()
    settings = rg.Settings(fields=[rg.TextField("text")], questions=[rg.LabelQuestion("label", labels=["joy", "sadness"])])
    dataset = rg.Dataset("ui-review", workspace="cleanloop", settings=settings, client=client).create()
    dataset.records.log([{"text": "i am so happy today", "id": "u1"}])

    browser = _browser(tmp_path / "chromium-profile")
    try:
        wait = sign_in(browser, argilla_server)

        browser.get(f"{argilla_server.url}/dataset/{dataset.id}/annotation-mode")
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "label[for=label_joy]"))).click()
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "button.button--submit"))).click()

        deadline = time.monotonic() + 30
        responses = []
        while time.monotonic() < deadline and not responses:
            record = next(iter(dataset.records(with_responses=True)))
            responses = list(record.responses)
            time.sleep(0.5)
    finally:
        browser.quit()
    assert [(r.question_name, r.value, getattr(r.status, "value", r.status)) for r in responses] == [("label", "joy", "submitted")]
    annotator_id = next(u.id for u in client.users if u.username == argilla_server.annotator)
    assert responses[0].user_id == annotator_id

"""Drives the live cluster view in a real headless Chromium, as a person would.

Usage: view_check.py VIEW_URL SCREENSHOT_PATH

Opens the page, waits until it shows every node and exactly one leader, clicks "kill" on
the leader's card, waits until another node leads, and saves a screenshot. Run by
`the_live_view_shows_a_failover_in_a_real_browser` (raft-kv-example/tests/processes.rs).
"""

import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

url, screenshot = sys.argv[1], sys.argv[2]


def cards(driver):
    """Each node card's (id, role), as the page shows them."""
    return [
        (c.get_attribute("data-id"), c.get_attribute("data-role"))
        for c in driver.find_elements(By.CSS_SELECTOR, ".node")
    ]


def wait_for(driver, what, check, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = check(cards(driver))
        if found:
            return found
        time.sleep(0.1)
    raise SystemExit(f"view check failed: {what} not seen within {timeout} s; the page shows {cards(driver)}")


options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"]:
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.get(url)

    def one_leader_of_three(shown):
        leaders = [i for i, role in shown if role == "leader"]
        up = [i for i, role in shown if role != "down"]
        return leaders[0] if len(shown) == 3 and len(up) == 3 and len(leaders) == 1 else None

    leader = wait_for(driver, "three nodes and one leader", one_leader_of_three)
    print(f"view: three nodes, node {leader} leads")
    started = time.time()
    driver.find_element(By.CSS_SELECTOR, f'.node[data-id="{leader}"] button.kill').click()

    def new_leader(shown):
        roles = dict(shown)
        others = [i for i, role in shown if role == "leader" and i != leader]
        return others[0] if roles.get(leader) == "down" and len(others) == 1 else None

    successor = wait_for(driver, "a new leader after the kill", new_leader)
    print(f"view: node {leader} killed; node {successor} leads {time.time() - started:.1f} s after the click")
    # Let the page draw the traffic around the new leader, then keep the picture.
    time.sleep(1.0)
    summary = driver.find_element(By.ID, "summary").text
    events = driver.find_element(By.ID, "events").text
    if f"node {successor}" not in summary or f"node {leader} is down" not in events:
        raise SystemExit(f"view check failed: summary {summary!r}, events {events!r}")
    driver.save_screenshot(screenshot)
    print(f"view: screenshot saved to {screenshot}")
finally:
    driver.quit()
print("view check passed")

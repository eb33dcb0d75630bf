"""The pages people look at, in a real headless Chromium: the dashboard and the API docs.

The service runs under a real uvicorn on loopback. The tests need Debian's ``chromium`` and
``chromium-driver`` (``.ci/run`` installs them) and are skipped, saying so, where they are absent.
Screenshots go to the test's temporary folder, or to ``BANDIT_SCREENSHOT_DIR`` when it is set.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2 as httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.live import serve

ARMS = ("4b", "7b", "14b")
__all__ = ["serve"]  # the fixture, imported


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip(
            "no browser: needs Debian's chromium and chromium-driver (.ci/run installs them)"
        )
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1900"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    chrome.set_page_load_timeout(30)
    yield chrome
    chrome.quit()


def drive_traffic(base: str, n: int) -> None:
    """Queries of three kinds; the 14b arm is accurate on code, the 4b arm on everything else."""
    queries = ["def merge(a, b): return sorted(a + b)", "what is a prime", "hello, how are you"]
    with httpx.Client(base_url=base) as http:
        for i in range(n):
            query = queries[i % 3]
            d = http.post("/choose", json={"query": query}).json()
            accurate = (d["arm"] == "14b") == query.startswith("def")
            size = {"4b": 300, "7b": 600, "14b": 1200}[d["arm"]]
            body = {"event_id": d["event_id"], "accuracy": 1.0 if accurate else 0.3}
            body |= {"latency_ms": size + 10 * (i % 7), "rating": 5 if accurate else 2}
            assert http.post("/reward", json=body).status_code == 200


def screenshot_path(tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("BANDIT_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def _remote_resources(browser: webdriver.Chrome, base: str) -> list[str]:
    names: list[str] = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    return [n for n in names if not n.startswith(base)]


_CHARTS_JS = """
const out = {};
for (const svg of document.querySelectorAll("svg[data-chart]")) {
  const series = {};
  for (const s of svg.querySelectorAll("[data-series]"))
    series[s.dataset.series] = s.dataset.values.split(" ").filter(Boolean).map(Number);
  out[svg.dataset.chart] = {
    max: Number(svg.dataset.max),
    legend: [...svg.querySelectorAll("text.legend")].map(t => t.textContent),
    series,
  };
}
return out;
"""


def _charts(browser: webdriver.Chrome) -> dict[str, Any]:
    """Every chart's data as drawn, read in one script call (the page redraws meanwhile)."""
    charts: dict[str, Any] = browser.execute_script(_CHARTS_JS)
    return charts


def _text(browser: webdriver.Chrome, element_id: str) -> str:
    text: str = browser.execute_script(f"return document.getElementById('{element_id}').innerText")
    return text


def _renders(browser: webdriver.Chrome) -> int:
    return int(browser.execute_script("return Number(document.body.dataset.rendered || 0)"))


def test_dashboard_renders_live_charts(
    serve: Callable[..., str], browser: webdriver.Chrome, tmp_path: Path
) -> None:
    base = serve(policy="egreedy:epsilon=0.2", challengers="linucb")
    drive_traffic(base, 150)
    browser.get(f"{base}/dashboard?refresh=1")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda b: _renders(b) >= 1)
    charts = _charts(browser)
    for chart in ("share", "reward", "exploration", "arm-reward", "arm-accuracy", "arm-latency"):
        assert charts[chart]["max"] > 0, chart
    for chart in ("share", "reward", "arm-reward", "arm-accuracy", "arm-latency", "arm-rating"):
        labels = {label.removeprefix("always ") for label in charts[chart]["legend"]}
        assert set(ARMS) <= labels, (chart, labels)
    for arm in ARMS:
        assert any(v > 0 for v in charts["share"]["series"][arm]), arm
    settings = _text(browser, "settings")
    assert "egreedy:epsilon=0.2" in settings and "epsilon=0.2, learning_rate=0.1" in settings
    assert "0.05" not in settings  # BANDIT_EPSILON: the spec's own epsilon is what runs
    assert "static" in _text(browser, "baselines")
    assert "linucb" in _text(browser, "challengers")
    # Live: more traffic shows up without a reload.
    before = _text(browser, "cards")
    drive_traffic(base, 3)
    wait.until(lambda b: _text(b, "cards") != before)
    assert _remote_resources(browser, base) == []
    assert browser.save_screenshot(str(screenshot_path(tmp_path, "dashboard.png")))


def test_docs_render_offline(
    serve: Callable[..., str], browser: webdriver.Chrome, tmp_path: Path
) -> None:
    base = serve()
    browser.get(f"{base}/docs")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".opblock")) >= 4)
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/choose", "/reward", "/stats", "/metrics"} <= paths, paths
    assert _remote_resources(browser, base) == []
    assert browser.save_screenshot(str(screenshot_path(tmp_path, "docs.png")))


def _stats_fetches(browser: webdriver.Chrome) -> int:
    count: int = browser.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(e => new URL(e.name).pathname.endsWith('/stats')).length"
    )
    return count


@pytest.mark.parametrize("refresh", ["0", "0.001", "-5", "x", "Infinity"])
def test_a_refresh_period_from_a_link_cannot_make_the_page_flood_stats(
    serve: Callable[..., str], browser: webdriver.Chrome, refresh: str
) -> None:
    """Anyone can send an operator a link: ``?refresh=0`` (or a word: NaN) made the page read
    /stats some 80 times a second for as long as it stayed open."""
    base = serve()
    browser.get(f"{base}/dashboard?refresh={refresh}")
    WebDriverWait(browser, 20).until(lambda b: _renders(b) >= 1)
    time.sleep(2.5)
    assert _stats_fetches(browser) <= 4  # the first read, then one a second at most
    assert "every NaN" not in _text(browser, "status")


HOSTILE = '"><img src=x onerror="window.__xss=1"><script>window.__xss=1</script>\n\x1b[31m'


def test_what_clients_and_links_send_is_shown_never_run(
    serve: Callable[..., str], browser: webdriver.Chrome
) -> None:
    """Client strings (query, features, event ids, gateway models) and a link's parameters reach
    no markup: /stats holds none of them (arms and policies are the operator's, checked at
    start), the page inserts every value as text, and the error answers that quote them are
    JSON, which a browser shows as text."""
    base = serve()
    with httpx.Client(base_url=base) as http:
        for i in range(12):
            body = {"query": HOSTILE, "features": {HOSTILE[:60]: HOSTILE, "n": 1}}
            d = http.post("/choose", json=body | {"event_id": f"x.{i}"}).json()
            assert http.post("/reward", json={"event_id": d["event_id"], "reward": 1}).is_success
        http.post("/v1/chat/completions", json={"model": HOSTILE, "messages": []})
    quoted = quote(HOSTILE)
    pages = [
        f"/dashboard?deployment={quoted}",
        f"/dashboard?window={quoted}&refresh={quoted}",
        "/dashboard",
        f"/docs?url={quoted}",
        f"/docs?configUrl={quoted}",
        f"/v1/models/{quoted}",
        f"/arms?deployment={quoted}",
        f"/v1/{quoted}",
    ]
    for page in pages:
        browser.get(base + page)
        time.sleep(1)  # the page's first read of /stats, and any script it would run
        ran = browser.execute_script("return [window.__xss || 0, document.images.length]")
        assert ran == [0, 0], page


def test_markup_that_reached_the_page_would_run_no_script(
    serve: Callable[..., str], browser: webdriver.Chrome
) -> None:
    """The page inserts every value as text; its Content-Security-Policy is the second line: an
    inline handler or script (what a value that ever reached markup would carry) does not run,
    and no other site may frame the page. The page itself still renders under it."""
    base = serve()
    headers = httpx.get(f"{base}/dashboard").headers
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert headers["x-content-type-options"] == "nosniff"
    browser.get(f"{base}/dashboard")
    WebDriverWait(browser, 20).until(lambda b: _renders(b) >= 1)
    browser.execute_script(
        "document.body.insertAdjacentHTML('beforeend', "
        '\'<img src=x onerror="window.__xss=1"><svg onload="window.__xss=2"></svg>\');'
        "const s = document.createElement('script'); s.textContent = 'window.__xss=3';"
        "document.body.appendChild(s);"
    )
    time.sleep(0.5)
    assert browser.execute_script("return window.__xss || 0") == 0


@pytest.mark.parametrize(("window", "analysed"), [("99999999", 5), ("-1", 5), ("x", 5), ("3", 3)])
def test_a_window_from_a_link_still_draws_the_page(
    serve: Callable[..., str], browser: webdriver.Chrome, window: str, analysed: int
) -> None:
    """``?window=`` reached /stats as it came: one /stats refuses (a word, -1, over 20,000) left
    the page saying only "HTTP 422", never drawn. Over the bound it is the bound; anything else
    that is not a whole number, the default."""
    base = serve()
    drive_traffic(base, 5)
    browser.get(f"{base}/dashboard?window={window}")
    WebDriverWait(browser, 20).until(lambda b: _renders(b) >= 1)
    cards = _text(browser, "cards")
    assert f"events in window\n{analysed}" in cards, cards


def test_a_refused_read_says_why(serve: Callable[..., str], browser: webdriver.Chrome) -> None:
    """The status line quoted the HTTP status alone; it now gives the service's message."""
    base = serve()
    browser.get(f"{base}/dashboard?deployment=nowhere")
    WebDriverWait(browser, 20).until(lambda b: "not updated" in _text(b, "status"))
    status = _text(browser, "status")
    assert "HTTP 422" in status and "unknown deployment 'nowhere'; valid: default" in status


def test_the_page_reads_stats_when_its_address_carries_the_key(
    serve: Callable[..., str], browser: webdriver.Chrome
) -> None:
    """``http://ops:KEY@host/dashboard`` gives the browser the Basic key without a prompt; the
    page loaded, but its reads, relative to an address holding credentials, were refused by
    fetch ("Request cannot be constructed from a URL that includes credentials")."""
    base = serve(ops_keys="ops-key")
    drive_traffic(base, 3)
    browser.get(base.replace("http://", "http://ops:ops-key@") + "/dashboard")
    WebDriverWait(browser, 20).until(lambda b: _renders(b) >= 1)
    assert "events in window\n3" in _text(browser, "cards")


def test_the_selector_shows_each_deployment_its_own_arms(
    serve: Callable[..., str], browser: webdriver.Chrome, tmp_path: Path
) -> None:
    """With a deployments file, the page lists the deployments, and picking one draws its own
    arms and settings (read with ?deployment=), not `default`'s."""
    file = tmp_path / "deployments.toml"
    file.write_text('[deployments.support]\narms = "small:4,large:14"\npolicy = "egreedy"\n')
    base = serve(deployments_file=str(file))
    drive_traffic(base, 30)
    with httpx.Client(base_url=base) as http:
        for _ in range(30):
            body = {"query": "my order never came", "deployment": "support"}
            d = http.post("/choose", json=body).json()
            assert d["arm"] in ("small", "large")
            good = d["arm"] == "large"
            reward = {"event_id": d["event_id"], "accuracy": float(good), "rating": 4}
            reward |= {"latency_ms": 500}  # every part the weights name: learned at once
            assert http.post("/reward", json=reward).status_code == 200
    browser.get(f"{base}/dashboard?refresh=1")
    wait = WebDriverWait(browser, 20)
    wait.until(lambda b: _renders(b) >= 1 and b.find_element(By.ID, "deployment").is_displayed())
    options = browser.find_elements(By.CSS_SELECTOR, "#deployment option")
    assert [o.text for o in options] == ["default", "support"]
    assert set(ARMS) <= set(_charts(browser)["share"]["series"])
    options[1].click()
    wait.until(lambda b: "deployment=support" in b.current_url and _renders(b) >= 1)
    share = _charts(browser)["share"]["series"]
    assert set(share) == {"small", "large"}, share
    assert any(v > 0 for v in share["large"]), share
    assert "egreedy" in _text(browser, "settings")
    assert browser.find_element(By.CSS_SELECTOR, "#deployment option:checked").text == "support"
    assert browser.save_screenshot(str(screenshot_path(tmp_path, "dashboard-support.png")))


def _rows(browser: webdriver.Chrome, element_id: str) -> dict[str, list[str]]:
    """A table's rows as drawn, by their first cell."""
    rows: list[list[str]] = browser.execute_script(
        f"return [...document.getElementById('{element_id}').rows].map("
        "r => [...r.cells].map(c => c.textContent))"
    )
    return {r[0]: r[1:] for r in rows[1:]}


def test_an_arm_no_longer_served_is_said_so_not_shown_never_decided(
    serve: Callable[..., str], browser: webdriver.Chrome, make_settings: Any
) -> None:
    """After a restart without 14b, its events stay in the window: its row said `decided 0`
    beside its share, as if it had never been chosen."""
    prefix = make_settings().key_prefix
    drive_traffic(serve(key_prefix=prefix, policy="random", seed=3), 60)
    base = serve(key_prefix=prefix, arms="4b,7b")
    browser.get(f"{base}/dashboard")
    WebDriverWait(browser, 20).until(lambda b: _renders(b) >= 1)
    rows = _rows(browser, "arms")
    assert set(rows) == {"4b", "7b", "14b (not served)"}, rows
    decided, share = rows["14b (not served)"][:2]
    assert decided == "\u2013" and float(share) > 0, rows
    assert all(int(rows[a][0]) > 0 for a in ("4b", "7b")), rows

"""The report and the Dagster UI in a real browser: Debian's chromium, headless, driven by selenium
through the system chromedriver (never a downloaded browser). `make test` installs both."""

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from curation_pipeline.definitions import ASSETS, build_resources
from curation_pipeline.resources.catalog import Catalog
from curation_pipeline.steps.report import write_report
from curation_pipeline_tests.conftest import make_small_drop

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), (
        "Debian chromium + chromium-driver are missing: `make test` installs them (apt-get)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1300,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _severe(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def _not_blank(png: bytes) -> float:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32)
    return float(pixels.std())


@pytest.fixture(scope="module")
def report(tmp_path_factory, pg_server_url):
    """A report over a real ingested drop, with a hostile file name among the objects."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    tmp = tmp_path_factory.mktemp("browser")
    name = "t_browser_report"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(pg_server_url)
    params["dbname"] = name
    url = make_conninfo(**params)
    folder = tmp / "drop"
    make_small_drop(folder, n_distinct=10)
    (folder / "<script>alert(1)<\\script>.jpg").write_bytes((folder / "img_01.jpg").read_bytes()[:200])
    os.environ.setdefault("CURATION_HOME", str(tmp / "home"))
    with dg.instance_for_test() as instance:
        Catalog(url).register_drop("web", str(folder))
        instance.add_dynamic_partitions("capture_drops", ["web"])
        assert dg.materialize(
            ASSETS[:3], partition_key="web", instance=instance, resources=build_resources(database_url=url)
        ).success
        instance.add_dynamic_partitions("selections", ["web-pick"])
        assert dg.materialize(
            [ASSETS[3]],
            partition_key="web-pick",
            instance=instance,
            resources=build_resources(database_url=url),
            run_config={"ops": {"curated_subset": {"config": {"budget": 6}}}},
        ).success
    out = write_report(Catalog(url), "web-pick", tmp / "report")
    return Path(out["path"]), out


def test_the_report_renders_every_section_with_working_images_and_map(browser, report):
    path, out = report
    browser.get(path.as_uri())
    assert _severe(browser) == [], _severe(browser)
    for section in (
        "counts",
        "map",
        "clusters",
        "outliers",
        "duplicates",
        "threshold",
        "versus-random",
        "subset",
        "quality",
        "failed",
    ):
        assert browser.find_elements("id", section), f"section #{section} missing"
    svg = browser.find_element("id", "embedding-map")
    sample = int(svg.get_attribute("data-points"))
    drawn = browser.execute_script("return document.querySelectorAll('#embedding-map circle.pt').length")
    assert (
        sample == len(json.loads(browser.execute_script("return document.getElementById('map-data').textContent"))) == drawn > 0
    )
    # every <img> in the page decoded (data: URIs), none broken
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0) && !i.hidden).map(i => i.alt)"
    )
    total = browser.execute_script("return document.images.length")
    assert total >= 10 and broken == [], broken
    # the hostile file name is text, not markup: no alert, no injected script element
    assert browser.execute_script("return document.querySelectorAll('script').length") == 2  # map data + map code
    assert "<script>alert(1)" in browser.find_element("tag name", "body").text
    # interactions: recolour by selection, zoom with the wheel, hover shows the thumbnail tip
    browser.find_element("css selector", "button.mapmode[data-mode=selected]").click()
    reds = browser.execute_script(
        "return Array.from(document.querySelectorAll('circle.pt')).filter(c => c.getAttribute('fill') == '#d62728').length"
    )
    assert reds == out["counts"]["subset_size"]
    before = browser.execute_script("return document.getElementById('embedding-map').viewBox.baseVal.width")
    browser.execute_script("""const s = document.getElementById('embedding-map'), r = s.getBoundingClientRect();
        s.dispatchEvent(new WheelEvent('wheel', {deltaY: -100, clientX: r.left + 50, clientY: r.top + 50,
                                                  bubbles: true, cancelable: true}));""")
    after = browser.execute_script("return document.getElementById('embedding-map').viewBox.baseVal.width")
    assert after < before
    browser.execute_script(
        "document.querySelector('circle.pt').dispatchEvent(new MouseEvent('mouseover', "
        "{bubbles: true, clientX: 10, clientY: 10}))"
    )
    assert browser.find_element("id", "map-tip").is_displayed()
    browser.execute_script("document.getElementById('map').scrollIntoView()")
    png = browser.get_screenshot_as_png()
    (path.parent / "screenshot.png").write_bytes(png)
    assert _not_blank(png) > 10
    assert _severe(browser) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_webserver(base: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until the webserver at `base` answers; fails with the process's stderr if it exits first."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/server_info", timeout=5):
                return
        except OSError as exc:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read().decode()[-3000:]) from exc
            if time.time() > deadline:
                raise AssertionError(f"no webserver at {base} after {timeout:.0f} s") from exc
            time.sleep(1)


def test_the_dagster_webserver_lists_every_asset(browser, tmp_path, database_url):
    port = _free_port()
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "DATABASE_URL": database_url, "CURATION_HOME": str(tmp_path / "curation")}
    webserver = str(Path(sys.executable).parent / "dagster-webserver")
    proc = subprocess.Popen(
        [webserver, "-m", "curation_pipeline.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_webserver(base, proc)
        query = json.dumps({"query": "{ assetNodes { assetKey { path } groupName kinds description } }"}).encode()
        req = urllib.request.Request(base + "/graphql", data=query, headers={"Content-Type": "application/json"})
        nodes = json.loads(urllib.request.urlopen(req, timeout=60).read())["data"]["assetNodes"]
        names = {n["assetKey"]["path"][-1] for n in nodes}
        expected = {a.key.path[-1] for a in ASSETS}
        assert names == expected
        assert all(n["description"] and n["groupName"] and n["kinds"] for n in nodes)

        browser.set_window_size(1300, 2200)
        browser.get(base + "/assets")
        # the catalog shortens long names in the middle ("raw_ima…anifest"): read the rows' links
        listed_js = (
            "return Array.from(document.querySelectorAll('a[href*=\"/assets/\"]'))"
            ".map(a => decodeURIComponent(new URL(a.href).pathname.split('/assets/')[1] || ''))"
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            listed = set(browser.execute_script(listed_js))
            if expected <= listed:
                break
            time.sleep(1)
        png = browser.get_screenshot_as_png()
        (tmp_path / "assets.png").write_bytes(png)
        assert expected - listed == set(), f"asset list page lacks {expected - listed}"
        assert _not_blank(png) > 5
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _free_port_pair() -> int:
    """A port P such that P and P + 1 (the reports) are both free."""
    for _ in range(50):
        port = _free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two free consecutive ports")


def _graphql(base: str, query: str) -> dict:
    req = urllib.request.Request(
        base + "/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    return json.loads(urllib.request.urlopen(req, timeout=60).read())["data"]


def _click_text(browser, text: str, timeout: float = 60):
    """Click the first button or link whose text is `text`, once it is there."""
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while True:
        for el in browser.find_elements(By.XPATH, f"//button[normalize-space()={text!r}] | //a[normalize-space()={text!r}]"):
            if el.is_displayed():
                el.click()
                return
        if time.time() > deadline:
            raise AssertionError(f"no {text!r} to click on {browser.current_url}")
        time.sleep(0.5)


def _skip_welcome(browser) -> None:
    browser.execute_script(
        "Array.from(document.querySelectorAll('button')).filter(b => b.textContent.trim() == 'Skip').forEach(b => b.click())"
    )


def test_a_cli_run_re_executes_from_the_ui_whose_pages_open_the_report_and_show_the_picks(browser, tmp_path, database_url):
    """`make ui` after CLI runs, clicked through as a person would: a CLI-launched run re-executes
    from its run page and succeeds; the report's asset page opens the report with one click; the
    subset's asset page shows its picks as thumbnails; stopping `make ui` leaves no process behind."""
    import signal

    from selenium.webdriver.common.by import By

    curation = str(Path(sys.executable).parent / "curation")
    home = tmp_path / "home"
    port = _free_port_pair()
    reports = f"http://127.0.0.1:{port + 1}/"
    env = {
        **os.environ,
        "CURATION_HOME": str(home),
        "DATABASE_URL": database_url,
        "DAGSTER_HOME": str(home / "dagster_home"),
        "CURATION_REPORTS_URL": reports,  # where `curation ui` serves them (default :3001, next to the default :3000)
    }
    make_small_drop(tmp_path / "drop")
    ingest = subprocess.run(
        [curation, "ingest", str(tmp_path / "drop"), "--drop", "web"], env=env, capture_output=True, text=True, timeout=300
    )
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    run_id = ingest.stderr.split("run ", 1)[1].split(" ", 1)[0]
    select = subprocess.run(
        [curation, "select", "--budget", "4", "--name", "web"], env=env, capture_output=True, text=True, timeout=300
    )
    assert select.returncode == 0, select.stderr[-3000:]

    ui = subprocess.Popen(
        [curation, "ui", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_webserver(base, ui)

        # 1. re-execute the CLI's ingest run from its run page
        browser.set_window_size(1400, 1100)
        browser.get(f"{base}/runs/{run_id}")
        time.sleep(3)
        _skip_welcome(browser)
        _click_text(browser, "Re-execute all (*)")
        deadline = time.time() + 60
        while f"/runs/{run_id}" in browser.current_url and time.time() < deadline:
            time.sleep(0.5)
        new_id = browser.current_url.rstrip("/").split("/runs/")[1].split("?")[0]
        assert new_id != run_id
        deadline = time.time() + 240
        while True:
            run = _graphql(base, f'{{ runOrError(runId: "{new_id}") {{ ... on Run {{ status parentRunId jobName }} }} }}')[
                "runOrError"
            ]
            if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") or time.time() > deadline:
                break
            time.sleep(2)
        assert run == {"status": "SUCCESS", "parentRunId": run_id, "jobName": "ingest_drop"}

        # 2. the report opens from its asset page, with one click
        browser.get(f"{base}/assets/curation_report?partition=web")
        time.sleep(3)
        _skip_welcome(browser)
        deadline = time.time() + 60
        while True:
            links = [a for a in browser.find_elements(By.TAG_NAME, "a") if (a.get_attribute("href") or "").startswith(reports)]
            if links or time.time() > deadline:
                break
            time.sleep(1)
        assert links, "no link to the report on the curation_report page"
        assert links[0].get_attribute("href") == reports + "web/index.html"
        tabs = set(browser.window_handles)
        links[0].click()
        time.sleep(2)
        opened = set(browser.window_handles) - tabs
        if opened:  # a new tab (target=_blank)
            browser.switch_to.window(opened.pop())
        try:
            deadline = time.time() + 30
            while "Curation report: web" not in browser.title and time.time() < deadline:
                time.sleep(0.5)
            assert browser.title == "Curation report: web"
            shown = browser.execute_script(
                "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"
            )
            assert shown >= 4
        finally:
            if opened is not None and len(browser.window_handles) > 1:
                browser.close()
                browser.switch_to.window(next(iter(tabs)))

        # 3. the subset's picks as thumbnails on its asset page
        browser.get(f"{base}/assets/curated_subset?partition=web")
        time.sleep(3)
        _skip_welcome(browser)
        # the page re-renders while it loads: find the link again for each try until the dialog shows
        deadline = time.time() + 60
        thumbs: list = []
        while not thumbs and time.time() < deadline:
            show = browser.find_elements(By.XPATH, "//tr[td[normalize-space()='picks']]//a[text()='[Show Markdown]']")
            if show:
                browser.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", show[0])
            time.sleep(2)
            thumbs = browser.execute_script(
                "return Array.from(document.querySelectorAll('img'))"
                ".filter(i => i.src.startsWith('data:image/') && i.complete && i.naturalWidth > 0).map(i => i.alt)"
            )
        (tmp_path / "picks.png").write_bytes(browser.get_screenshot_as_png())
        assert len(thumbs) == 4, thumbs  # the budget: every pick, each with its name
        assert all(t.endswith((".jpg", ".png")) for t in thumbs)
    finally:
        ui.send_signal(signal.SIGTERM)
        try:
            ui.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            raise AssertionError("`curation ui` did not stop within 40 s of SIGTERM") from None
    # nothing of its process group is left: dagster dev, webserver, daemon, code server, run workers
    time.sleep(1)
    try:
        os.killpg(ui.pid, 0)
    except ProcessLookupError:
        pass
    else:
        os.killpg(ui.pid, signal.SIGKILL)
        raise AssertionError("processes of `curation ui` outlived it")

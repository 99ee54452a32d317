"""The Attention Explorer and a student's first notebook, used as a person would: in headless
Chromium (Debian's `chromium` package, driven by Playwright; never a downloaded browser).

- The explorer: the real Voilà server (`make explorer`'s command) on 127.0.0.1 on a free port.
  For each section of `course.explore.gallery.ENTRIES`: wait for its picture, turn its probe control
  (dropdown, text box or slider), and check the picture's bytes really changed. Timings (command
  to first heatmap, each redraw) go to test-artifacts/browser/timings.json.
- JupyterLab on a copy of exercises/day01-sdpa: run all cells with the stubs as released and check
  that they say "not implemented yet" instead of a wall of traceback.

Screenshots go to test-artifacts/browser/ (git-ignored). Every server is started in its own
session and stopped by its own PID (SIGTERM, then SIGKILL of its process group).
"""

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import ROOT

pytestmark = pytest.mark.browser

ARTIFACTS = ROOT / "test-artifacts" / "browser"
BIN = Path(sys.executable).parent
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
START_TIMEOUT = 180  # s: a cold start trains the tiny transformer on a busy shared CPU
REDRAW_TIMEOUT = 60_000  # ms
TIMINGS = {}


# ----------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server process in its own session; `stop()` ends it by its own PID."""

    def __init__(self, name: str, command: list, url: str, env: dict, cwd: Path):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.log_path = ARTIFACTS / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.url = url
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_until_up(self, path: str = "") -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the server exited with {self.process.returncode}:\n{self.tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + path, timeout=5):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        raise TimeoutError(f"no answer from {self.url} in {START_TIMEOUT} s:\n{self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-3000:]

    def stop(self) -> None:
        pid = self.process.pid
        if self.process.poll() is None:
            os.kill(pid, signal.SIGTERM)  # Voilà and Jupyter shut their kernels down on SIGTERM
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever it left behind in its own process group (a kernel that did not exit)
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(timeout=10)
        self.log.close()


def server_env(tmp: Path) -> dict:
    """An isolated Jupyter configuration: no user settings, no news announcements."""
    config = tmp / "jupyter-config"
    (config / "labconfig").mkdir(parents=True, exist_ok=True)
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    # Every cell in the DOM (JupyterLab 4 renders only the visible ones by default).
    notebook_settings = tmp / "lab-settings" / "@jupyterlab" / "notebook-extension"
    notebook_settings.mkdir(parents=True, exist_ok=True)
    (notebook_settings / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"})
    )
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(config),
        JUPYTERLAB_SETTINGS_DIR=str(tmp / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "lab-workspaces"),
        JUPYTER_RUNTIME_DIR=str(tmp / "jupyter-runtime"),
        MPLBACKEND="Agg",
    )
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


# ----------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip(
            "Chromium is not installed (Debian package `chromium`): `make test` installs it "
            "(tools/install-debian-packages.sh) "
            "with apt-get as root or with sudo; without either it cannot be installed here"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def image_bytes(page, image) -> bytes:
    """The bytes behind an <img> (a blob: URL for an ipywidgets Image)."""
    src = image.get_attribute("src")
    data = page.evaluate(
        """async (src) => {
        const buffer = await (await fetch(src)).arrayBuffer();
        let text = ""; for (const b of new Uint8Array(buffer)) text += String.fromCharCode(b);
        return btoa(text);
    }""",
        src,
    )
    return base64.b64decode(data)


def wait_for_new_src(page, image, before: str) -> float:
    """Seconds until `image`'s src is no longer `before`."""
    start = time.perf_counter()
    handle = image.element_handle()
    page.wait_for_function(
        "([img, before]) => img.getAttribute('src') !== before",
        arg=[handle, before],
        timeout=REDRAW_TIMEOUT,
    )
    return time.perf_counter() - start


def save_timings() -> None:
    TIMINGS["load average (1, 5, 15 min)"] = [round(x, 1) for x in os.getloadavg()]
    TIMINGS["cpus"] = os.cpu_count()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")


# ----------------------------------------------------------------------------- the explorer

from course.explore.gallery import ENTRIES  # noqa: E402 (after the helpers: the import loads torch)


@pytest.fixture(scope="module")
def explorer_page(browser, tmp_path_factory):
    """The Attention Explorer, served as `make explorer` serves it, open in one page."""
    tmp = tmp_path_factory.mktemp("voila")
    port = free_port()
    command = [
        str(BIN / "voila"),
        "explorer/attention-explorer.ipynb",
        "--no-browser",
        "--Voila.ip=127.0.0.1",
        f"--port={port}",
        "--progressive_rendering=True",
        "--strip_sources=True",
    ]
    server = Server("voila", command, f"http://127.0.0.1:{port}/", server_env(tmp), ROOT)
    page = None
    try:
        server.wait_until_up()
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(START_TIMEOUT * 1000)
        page.goto(server.url, timeout=START_TIMEOUT * 1000)
        page.locator("img.gallery-image").first.wait_for(state="visible")
        TIMINGS["command to first heatmap (s)"] = round(time.perf_counter() - server.started, 2)
        page.locator(f".gallery-section-{ENTRIES[-1].slug} img.gallery-image").wait_for(
            state="visible"
        )
        TIMINGS["command to every section (s)"] = round(time.perf_counter() - server.started, 2)
        page.screenshot(path=ARTIFACTS / "explorer-top.png")
        yield page
    except Exception:
        if page is not None:
            page.screenshot(path=ARTIFACTS / "explorer-failed.png")
        print(server.tail())
        raise
    finally:
        save_timings()
        if page is not None:
            page.close()
        server.stop()


def turn(page, probe) -> str:
    """Change the probe control as a person would; return what was done."""
    classes = probe.get_attribute("class") or ""
    if "widget-dropdown" in classes:
        select = probe.locator("select")
        current = select.input_value()
        values = select.locator("option").evaluate_all("options => options.map(o => o.value)")
        new = next(v for v in values if v != current)
        select.select_option(new)
        return f"dropdown {current!r} -> {new!r}"
    if "widget-text" in classes:
        box = probe.locator("input")
        box.fill("9 8 7 6 5 4 3 2")
        box.press("Enter")
        return "typed 9 8 7 6 5 4 3 2"
    if "widget-slider" in classes:
        handle = probe.locator(".noUi-handle")
        handle.focus()
        handle.press("ArrowRight")
        return "slider one step right (keyboard)"
    raise AssertionError(f"no way to turn a control with classes {classes!r}")


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda entry: entry.slug)
def test_each_section_redraws_when_its_control_changes(explorer_page, entry):
    page = explorer_page
    section = page.locator(f".gallery-section-{entry.slug}")
    image = section.locator("img.gallery-image")
    image.wait_for(state="visible")
    section.scroll_into_view_if_needed()
    section.screenshot(path=ARTIFACTS / f"{entry.slug}-before.png")
    before_src, before = image.get_attribute("src"), image_bytes(page, image)
    assert before.startswith(b"\x89PNG")
    stats = section.locator(".gallery-stats-panel")
    assert stats.locator("table").count() == (1 if entry.stats else 0), stats.inner_text()
    link = section.locator("a.png-download")
    assert link.get_attribute("download") == f"{entry.slug}.png"
    before_href = link.get_attribute("href")
    assert base64.b64decode(before_href.removeprefix("data:image/png;base64,")) == before

    action = turn(page, section.locator(".gallery-probe"))
    seconds = wait_for_new_src(page, image, before_src)
    after = image_bytes(page, image)
    assert after.startswith(b"\x89PNG") and after != before, f"{action}: the picture did not change"
    TIMINGS[f"redraw: {entry.slug}, {action} (s)"] = round(seconds, 3)
    # The link follows the picture: what it saves is what is shown.
    # The HTML widget replaces its <a> on every update: poll the locator, not an element.
    deadline = time.monotonic() + REDRAW_TIMEOUT / 1000
    while link.get_attribute("href") == before_href and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert (
        base64.b64decode(link.get_attribute("href").removeprefix("data:image/png;base64,")) == after
    )
    section.screenshot(path=ARTIFACTS / f"{entry.slug}-after.png")
    save_timings()


def test_clicking_a_head_enlarges_it(explorer_page):
    page = explorer_page
    section = page.locator(f".gallery-section-{ENTRIES[0].slug}")
    image = section.locator("img.gallery-image")
    grid_src, grid = image.get_attribute("src"), image_bytes(page, image)
    section.get_by_role("button", name="L1 H2").click()
    TIMINGS["redraw: enlarge head L1 H2 (s)"] = round(wait_for_new_src(page, image, grid_src), 3)
    single = image_bytes(page, image)
    assert single != grid
    section.screenshot(path=ARTIFACTS / "tiny-transformer-heads-L1H2.png")
    query = section.locator(".widget-dropdown select").last  # the ModelExplorer's query row
    src = image.get_attribute("src")
    query.select_option(query.locator("option").nth(4).get_attribute("value"))
    wait_for_new_src(page, image, src)
    assert image_bytes(page, image) != single
    save_timings()


# ----------------------------------------------------------------------------- JupyterLab


def lab_api(base: str, token: str, path: str, method: str = "GET"):
    request = urllib.request.Request(
        f"{base}{path}", method=method, headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if body else None


# Run All stops at the first example cell that calls a stub: course/__init__.py turns the
# NotImplementedError into one line that says what to do, instead of a traceback.
def test_day01_stubs_say_not_implemented_yet_in_jupyterlab(browser, tmp_path):
    # A copy: JupyterLab autosaves, and the committed exercise must stay without outputs.
    work = tmp_path / "work"
    shutil.copytree(ROOT / "exercises" / "day01-sdpa", work / "day01-sdpa")
    port, token = free_port(), "browser-test"
    base = f"http://127.0.0.1:{port}"
    command = [
        str(BIN / "jupyter"),
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--allow-root",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={work}",
        "--ServerApp.open_browser=False",
    ]
    server = Server(
        "jupyterlab", command, f"{base}/api/status?token={token}", server_env(tmp_path), work
    )
    page = None
    try:
        server.wait_until_up()
        for session in lab_api(base, token, "/api/sessions"):  # stale sessions: none may linger
            lab_api(base, token, f"/api/sessions/{session['id']}", method="DELETE")
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(f"{base}/lab/tree/day01-sdpa/day01-sdpa.ipynb?token={token}")
        idle = "() => (document.querySelector('#jp-main-statusbar')?.innerText || '').includes('| Idle')"
        page.wait_for_function(idle)  # the kernel status bar, not the execution indicator
        page.locator(".jp-Notebook").first.click()
        page.keyboard.press("Control+Shift+c")  # the command palette
        palette = page.locator(".lm-CommandPalette-input")
        palette.fill("Run All Cells")
        page.locator(".lm-CommandPalette-item", has_text="Run All Cells").first.click()
        # Busy while cells run, Idle again when the run is over (or stopped at an error).
        page.wait_for_function(
            "() => document.querySelector('#jp-main-statusbar').innerText.includes('Busy')"
            " || document.querySelectorAll('.jp-OutputArea-output').length > 0"
        )
        page.wait_for_function(
            "() => document.querySelector('#jp-main-statusbar').innerText.includes('| Idle') && "
            "![...document.querySelectorAll('.jp-InputArea-prompt')].some(p => p.innerText.includes('*'))",
            timeout=300_000,
        )
        outputs = page.locator(".jp-OutputArea-output").all_inner_texts()
        page.screenshot(path=ARTIFACTS / "jupyterlab-day01.png", full_page=True)
        (ARTIFACTS / "jupyterlab-day01-outputs.txt").write_text("\n----\n".join(outputs))
        text = "\n".join(outputs)
        assert re.search(r"\bstable_softmax is not implemented yet", text), text[-2000:]
        assert "Traceback (most recent call last)" not in text, text[-2000:]
        walls = [o for o in outputs if "NotImplementedError" in o and o.count("\n") > 8]
        assert not walls, walls[0][:1500]
    except Exception:
        if page is not None:
            page.screenshot(path=ARTIFACTS / "jupyterlab-failed.png", full_page=True)
        print(server.tail())
        raise
    finally:
        if page is not None:
            page.close()
        server.stop()

"""The asv dashboard: `asv publish` renders results/asv/ (or LLMOPT_ASV_RESULTS) into a temporary folder; its graphs
must hold at least two commits of attention history on one machine, and headless Chromium, served the pages on
127.0.0.1, must render the attention benchmarks and their history graph (DOM and a screenshot)."""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("LLMOPT_ASV_RESULTS", REPO / "results" / "asv"))
GRAPH = "attention.Attention.track_ms"
# asv's pages load these scripts from CDNs, unreachable from a closed network: the test serves Debian's copies (packages
# libjs-jquery, libjs-jquery-flot, libjs-jquery-stupidtable, libjs-bootstrap, node-blueimp-md5) in their place.
# flot's orderBars plugin, which only places bars side by side, has no Debian package and is left out.
DEBIAN_JS = Path("/usr/share/javascript")
CDN_COPIES = {"jquery-3.3.1.min.js": "jquery/jquery.min.js", "jquery.flot.min.js": "jquery-flot/jquery.flot.min.js",
              "jquery.flot.time.min.js": "jquery-flot/jquery.flot.time.min.js",
              "jquery.flot.selection.min.js": "jquery-flot/jquery.flot.selection.min.js",
              "jquery.flot.categories.min.js": "jquery-flot/jquery.flot.categories.min.js",
              "stupidtable.min.js": "jquery-stupidtable/stupidtable.min.js", "md5.min.js": "blueimp-md5/md5.min.js",
              "bootstrap.min.js": "bootstrap/js/bootstrap.min.js",
              "bootstrap.min.css": "bootstrap/css/bootstrap.min.css"}
CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000", "--virtual-time-budget=10000"]


@pytest.fixture(scope="module")
def publication(tmp_path_factory) -> tuple[Path, str]:
    """(html folder, asv's output when it failed) of the dashboard published from RESULTS by the repository's
    asv.conf.json, paths and HOME moved to a temp folder."""
    util = pytest.importorskip("asv.util")
    tmp = tmp_path_factory.mktemp("asv")
    config = util.load_json(str(REPO / "asv.conf.json"), js_comments=True, api_version=1)
    config.update(version=1, repo=str(REPO), benchmark_dir=str(REPO / config["benchmark_dir"]),
                  results_dir=str(RESULTS), html_dir=str(tmp / "html"), env_dir=str(tmp / "env"))
    (tmp / "asv.conf.json").write_text(json.dumps(config))
    publish = subprocess.run([sys.executable, "-m", "asv", "publish", "--no-pull"], cwd=tmp, capture_output=True,
                             text=True, timeout=120, env={**os.environ, "HOME": str(tmp)}, check=False)
    return tmp / "html", "" if publish.returncode == 0 else publish.stdout + publish.stderr


def published(publication: tuple[Path, str]) -> Path:
    html, failure = publication
    assert not failure, f"asv publish of {RESULTS} failed:\n{failure}"
    return html


def attention_history(site: Path) -> dict[str, list[int]]:
    """{machine: sorted revisions (asv's commit numbers) with at least one attention result}, from the graph data."""
    history = {}
    for path in site.glob(f"graphs/**/{GRAPH}.json"):
        machine = next((part.removeprefix("machine-") for part in path.parts if part.startswith("machine-")), None)
        if machine is not None:
            measured = {rev for rev, values in json.loads(path.read_text()) if any(v is not None for v in values)}
            history[machine] = sorted(set(history.get(machine, [])) | measured)
    return history


def test_published_history_has_two_commits_of_attention(publication):
    history = attention_history(published(publication))
    assert history and max(len(revisions) for revisions in history.values()) >= 2, (
        f"the dashboard needs two commits of attention results on one machine; {RESULTS} has, per machine, "
        f"{ {machine: len(revisions) for machine, revisions in history.items()} or 'none'}")


def serve_offline_copies(site: Path) -> None:
    """Point index.html's CDN tags at Debian's copies, copied beside it (their bytes differ: no integrity check)."""
    missing = [path for path in CDN_COPIES.values() if not (DEBIAN_JS / path).is_file()]
    if missing:
        pytest.skip(f"Debian's copies of asv's CDN scripts are not installed ({', '.join(missing)}): "
                    "apt-get install libjs-jquery libjs-jquery-flot libjs-jquery-stupidtable libjs-bootstrap "
                    "node-blueimp-md5")
    (site / "vendor").mkdir(exist_ok=True)

    def local(tag: re.Match) -> str:
        name = tag["url"].rsplit("/", 1)[1]
        if name not in CDN_COPIES:
            return ""
        shutil.copy(DEBIAN_JS / CDN_COPIES[name], site / "vendor" / name)
        return re.sub(r' integrity="[^"]*"', "", tag[0]).replace(tag["url"], f"vendor/{name}")

    page = (site / "index.html").read_text()
    page = re.sub(r'<(script|link)[^>]*?(src|href)="(?P<url>https://[^"]*)"[^>]*>(</script>)?', local, page)
    (site / "index.html").write_text(page)


def chromium(url: str, profile: Path, *action: str) -> str:
    done = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *action, url],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        """Drop the per-request log lines (the test asserts on the pages, not on the server's log)."""


def test_dashboard_renders_in_chromium(publication, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium not installed: apt-get install chromium (Debian's package)")
    site = published(publication)
    serve_offline_copies(site)
    history = attention_history(site)
    assert history, f"no attention results in {RESULTS}"
    machine = max(history, key=lambda m: len(history[m]))

    handler = functools.partial(QuietHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    try:
        grid = chromium(url, tmp_path / "grid", "--dump-dom")
        graph = chromium(f"{url}#{GRAPH}", tmp_path / "graph", "--dump-dom")
        chromium(f"{url}#{GRAPH}", tmp_path / "shot", f"--screenshot={tmp_path / 'dash.png'}")
    finally:
        server.shutdown()
        server.server_close()
    assert "airspeed velocity error" not in grid, "asv's scripts did not load"
    assert "attention" in grid and GRAPH in grid
    assert GRAPH in graph and machine in graph  # the graph page, with the machine among its choices
    png = (tmp_path / "dash.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000

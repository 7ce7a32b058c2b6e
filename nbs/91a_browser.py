# %%
#| default_exp browser

# %% [markdown]
# # Checking pages in a browser
#
# > The report site as a reader sees it: pages opened in headless Chromium, checked, photographed.

# %% [markdown]
# A page can be valid HTML and still broken for a reader (a figure that does not decode, a silent player, raw
# attribute text, a script that throws, a remote font): only a browser shows it. This module drives the system's
# Chromium (`$URBANSOUND_CHROMIUM` names another) with Playwright for Python (the `browser` extra), never Playwright's
# own download. It serves the site over loopback HTTP and refuses, and reports, every request to another host.

# %%
#| export
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import http.server
import importlib.util
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

# %% [markdown]
# ## Finding and starting Chromium

# %%
#| export
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Without the networking flags Chromium keeps calling Google's services, which a closed network refuses.
CHROMIUM_ARGS = ["--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic", "--autoplay-policy=no-user-gesture-required"]

def find_chromium() -> str | None:
    "The Chromium to drive: `$URBANSOUND_CHROMIUM`, else the first of CHROMIUM_NAMES on the PATH; None if none."
    named = os.environ.get("URBANSOUND_CHROMIUM")
    if named: return named if Path(named).is_file() else None
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)

def missing_browser() -> str | None:
    "Why pages cannot be checked here (no Playwright, no Chromium), or None when they can."
    if importlib.util.find_spec("playwright") is None:
        return "Playwright is not installed: pip install 'urbansound_nb[browser]'"
    if not find_chromium():
        return ("no Chromium found (looked for $URBANSOUND_CHROMIUM and " + ", ".join(CHROMIUM_NAMES)
                + "): on Debian, apt-get install chromium")
    return None

# %%
print(find_chromium(), "|", missing_browser())

# %% [markdown]
# Playwright's synchronous API refuses to run inside an asyncio loop, as a Jupyter kernel's, so there it runs in a
# thread.

# %%
#| export
def _off_the_loop(fn):
    "Run `fn` in a worker thread when this thread runs an asyncio loop (a Jupyter kernel), else here."
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try: asyncio.get_running_loop()
        except RuntimeError: return fn(*args, **kwargs)
        with concurrent.futures.ThreadPoolExecutor(1) as pool: return pool.submit(fn, *args, **kwargs).result()
    return wrapper

@contextlib.contextmanager
def chromium():
    "A headless Chromium driven by Playwright; a clear error when either is missing."
    why = missing_browser()
    if why: raise RuntimeError(why)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_chromium(), headless=True, args=CHROMIUM_ARGS)
        try: yield browser
        finally: browser.close()

# %% [markdown]
# ## Serving a folder on loopback

# %%
#| export
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass

@contextlib.contextmanager
def serve_folder(folder):
    "Serve `folder` over HTTP on a free loopback port; yields the base URL."
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try: yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()

# %%
import tempfile
import urllib.request
with tempfile.TemporaryDirectory() as d:
    (Path(d)/"a.html").write_text("<p>hello</p>")
    with serve_folder(d) as url: assert urllib.request.urlopen(url + "a.html").read() == b"<p>hello</p>"

# %% [markdown]
# ## What is checked on a page
#
# No console error or uncaught exception, no other host asked, every `<img>` decoded, every `<audio>` with a duration,
# no raw `:::` or `{#... .cell` text, and a sidebar linking every chapter.

# %%
#| export
RAW_TEXT = re.compile(r"^\s*:::|\{#[\w-]*\s*\.cell|quarto-private")
SIDEBAR_LINKS = "#quarto-sidebar a[href], nav.usn-nav a[href]"
_AUDIO_DURATIONS = """async () => Promise.all([...document.querySelectorAll('audio')].map(a => new Promise(done => {
  const report = () => done(isFinite(a.duration) ? a.duration : 0);
  if (a.readyState >= 1) return report();
  a.addEventListener('loadedmetadata', report); a.addEventListener('error', () => done(-1));
  setTimeout(report, 15000); a.preload = 'metadata'; a.load();
})))"""
_UNDECODED_IMAGES = """() => [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))
  .map(i => (i.getAttribute('src') || '').slice(0, 60))"""
# the page's text as a reader sees it, code left out: a code span may quote `:::` on purpose (the API pages do)
_PROSE_TEXT = """() => { const body = document.body.cloneNode(true);
  body.querySelectorAll('code, pre').forEach(c => c.remove()); return body.innerText; }"""

def _open(browser, url: str, problems: list[str]):
    "A new page at `url` that records console errors, uncaught exceptions and requests to other hosts."
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text[:200]}"))
    page.on("pageerror", lambda e: problems.append(f"uncaught exception: {str(e)[:200]}"))
    def local_only(route):
        host = urlparse(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            return route.continue_()
        problems.append(f"asked a remote host: {route.request.url[:120]}")
        return route.abort()
    page.route("**/*", local_only)
    page.goto(url, wait_until="load")
    return page

def page_problems(browser, url: str, chapters=()) -> list[str]:
    "What is wrong with the page at `url`, as a reader would see it (empty when nothing is)."
    problems: list[str] = []
    page = _open(browser, url, problems)
    try:
        problems += [f"image not decoded: {src}" for src in page.evaluate(_UNDECODED_IMAGES)]
        durations = page.evaluate(_AUDIO_DURATIONS)
        problems += [f"audio player {i} has no audio (duration {d})" for i, d in enumerate(durations) if not d > 0]
        text = page.evaluate(_PROSE_TEXT)
        problems += [f"raw text: {line.strip()[:100]!r}" for line in text.splitlines() if RAW_TEXT.search(line)]
        hrefs = page.eval_on_selector_all(SIDEBAR_LINKS, "as => as.map(a => a.href)")
        linked = {Path(urlparse(h).path).name for h in hrefs}
        problems += [f"sidebar has no link to {c}.html" for c in chapters if f"{c}.html" not in linked]
    finally: page.close()
    return problems

# %% [markdown]
# ## A whole site

# %%
#| export
def site_pages(site_dir) -> list[str]:
    "The HTML pages of a rendered site, front page first."
    names = sorted(p.name for p in Path(site_dir).glob("*.html"))
    return sorted(names, key=lambda n: n != "index.html")

@_off_the_loop
def check_site(site_dir, chapters=None) -> dict[str, list[str]]:
    "Open every page of a rendered site in headless Chromium; the problems found per page."
    pages = site_pages(site_dir)
    chapters = list(chapters) if chapters is not None else [Path(p).stem for p in pages if re.match(r"\d\d_", p)]
    with serve_folder(site_dir) as base, chromium() as browser:
        return {name: page_problems(browser, base + name, chapters) for name in pages}

@_off_the_loop
def screenshot_site(site_dir, out_dir) -> list[Path]:
    "A PNG of the top of every page of a rendered site (1280 x 900), written into `out_dir`."
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = []
    with serve_folder(site_dir) as base, chromium() as browser:
        for name in site_pages(site_dir):
            page = _open(browser, base + name, [])
            shot = out_dir/f"{Path(name).stem}.png"
            try:
                page.screenshot(path=str(shot))
                shots.append(shot)
            finally: page.close()
    return shots

# %% [markdown]
# Two pages, one broken on purpose, checked when a browser is present:

# %%
with tempfile.TemporaryDirectory() as d:
    nav = '<nav class="usn-nav"><a href="00_demo.html">Demo</a></nav>'
    (Path(d)/"00_demo.html").write_text(f"<html><body>{nav}<p>A fine page.</p></body></html>")
    (Path(d)/"index.html").write_text('<html><body><img src="data:image/png;base64,AAAA">'
                                      '<script src="https://cdn.example.org/x.js"></script>'
                                      '<p>::: {#13f2 .cell 0=\'e\'}</p></body></html>')
    if missing_browser(): print("not checked:", missing_browser())
    else:
        found = check_site(d)
        print(found)
        assert found["00_demo.html"] == [] and len(found["index.html"]) >= 4
        assert any("remote host" in p for p in found["index.html"])
        assert any("raw text" in p for p in found["index.html"])

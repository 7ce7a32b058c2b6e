"""JupyterLab as `make lab` starts it, and a chapter opened in it in headless Chromium: the test of the path by which
users read and rerun the chapters (`configure_lab` makes Jupytext open the `.py` files as notebooks)."""
import contextlib
import secrets
import socket
import subprocess
import tempfile
import time
import urllib.request

from urbansound_nb.browser import _off_the_loop, chromium


def free_port() -> int:
    "A TCP port on loopback that nothing listens on now."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_lab(root=None, timeout: float = 120):
    "JupyterLab started as `make lab` does, on a free loopback port with a token; yields its URL and token."
    from urbansound_nb.runner import configure_lab, lab_command, project_root
    configure_lab()
    port, token = free_port(), secrets.token_hex(16)
    cmd = lab_command(root, extra=["--no-browser", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
                                   f"--IdentityProvider.token={token}"])
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(cmd, cwd=project_root(root), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"JupyterLab did not start ({' '.join(cmd)}):\n{tail}")
                time.sleep(0.5)
        yield url, token
    finally:
        server.terminate()
        try: server.wait(timeout=20)
        except subprocess.TimeoutExpired: server.kill()
        log.close()


@_off_the_loop
def lab_opens_as_notebook(path="nbs/00_setup.py", screenshot=None, timeout: float = 120) -> int:
    "Open `path` in JupyterLab (started here) in headless Chromium; the number of notebook cells shown."
    with running_lab() as (url, token), chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}lab/tree/{path}?token={token}", timeout=timeout * 1000)
        page.wait_for_selector(".jp-NotebookPanel .jp-Cell, .jp-FileEditor", timeout=timeout * 1000)
        count = lambda: len(page.query_selector_all(".jp-NotebookPanel:visible .jp-Cell"))
        shown, steady = count(), 0
        for _ in range(int(timeout)):    # cells render progressively, slower on a loaded machine: until 5 s unchanged
            if steady == 5: break
            page.wait_for_timeout(1000)
            before, shown = shown, count()
            steady = steady + 1 if shown == before else 0
        if screenshot: page.screenshot(path=str(screenshot))
        if page.query_selector(".jp-FileEditor:visible"): raise AssertionError(f"{path} opened in a text editor")
        return shown

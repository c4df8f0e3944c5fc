"""A minimal headless-Chromium driver over the DevTools protocol, for viewer tests, benchmarks and
screenshots. Standard library only: no browser download, no driver binary, no websocket package.

Chromium is started with `--remote-debugging-pipe`: it reads protocol messages (JSON, each ended by
a NUL byte) on file descriptor 3 and writes replies and events on descriptor 4. A reader thread
splits the stream, hands replies to the command waiting for them (by id) and keeps every event.
Steps of `Browser.new_page`: create a target, attach to it in flat mode (one session id per page),
enable the Page, Runtime, Network and Log domains so console errors, exceptions, network requests
and JavaScript dialogs are recorded; dialogs are dismissed at once (an `alert` would block the page).

Find the binary with `find_chromium()` ($SPARSECIRCUITS_CHROMIUM, else `chromium`, `chromium-browser`,
`google-chrome` on PATH); Debian: `apt-get install chromium`.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


class BrowserError(RuntimeError):
    """Chromium is missing, died, or a protocol command failed or timed out."""


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None."""
    env = os.environ.get("SPARSECIRCUITS_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _above(fd: int, low: int) -> int:
    """A duplicate of `fd` numbered >= `low` (the original is closed)."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD, low)
    os.close(fd)
    return new


@dataclass
class PageLog:
    """What a page did: console errors, uncaught exceptions, requests other than the page itself and
    inline `data:` URLs, dialogs."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


class Browser:
    """A headless Chromium process; use as a context manager."""

    def __init__(self, binary: str | None = None, timeout: float = 30.0) -> None:
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise BrowserError("no Chromium binary found (install Debian's `chromium` or set $SPARSECIRCUITS_CHROMIUM)")
        self.timeout = timeout
        self._next_id = 0
        self._pending: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._events: list[dict[str, Any]] = []
        self._pages: dict[str, Page] = {}

    def __enter__(self) -> Browser:
        self._profile = tempfile.mkdtemp(prefix="sc-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # The child's ends must not sit on 3 or 4 themselves, or the dup2 calls below clobber them.
        to_child_r, from_child_w = (_above(fd, 10) for fd in (to_child_r, from_child_w))
        flags = ["--headless=new", "--remote-debugging-pipe", "--disable-gpu", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps", "--mute-audio",
                 "--disable-dev-shm-usage", f"--user-data-dir={self._profile}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.insert(0, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        # A Python trampoline maps our pipe ends onto descriptors 3 and 4, where Chromium expects them
        # (dash, Debian's sh, cannot redirect descriptors above 9).
        script = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execv(sys.argv[3], sys.argv[3:])"
        self._stderr = open(Path(self._profile) / "stderr.txt", "wb")  # noqa: SIM115 (closed in __exit__)
        argv = [sys.executable, "-c", script, str(to_child_r), str(from_child_w), self.binary, *flags]
        self._proc = subprocess.Popen(argv, pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=self._stderr)
        os.close(to_child_r)
        os.close(from_child_w)
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        try:
            self.send("Target.setDiscoverTargets", {"discover": False})
        except BrowserError:
            self.__exit__()  # do not leave a half-started browser or its profile behind
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except BrowserError:
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self._stderr.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def stderr_tail(self, n: int = 600) -> str:
        try:
            return (Path(self._profile) / "stderr.txt").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for raw in messages:
                self._dispatch(json.loads(raw))

    def _dispatch(self, msg: dict[str, Any]) -> None:
        if "id" in msg:
            with self._cond:
                self._pending[msg["id"]] = msg
                self._cond.notify_all()
            return
        page = self._pages.get(msg.get("sessionId", ""))
        if page is not None:
            page._on_event(msg["method"], msg.get("params", {}))
        with self._cond:
            self._events.append(msg)
            self._cond.notify_all()

    def post(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> int:
        """Send a command without waiting for its reply; returns its id."""
        with self._cond:
            self._next_id += 1
            mid = self._next_id
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        try:
            os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        except OSError as e:
            raise BrowserError(f"Chromium is gone ({e}); its last words: {self.stderr_tail()!r}") from None
        return mid

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float | None = None) -> dict[str, Any]:
        """Send a command and wait for its result."""
        mid = self.post(method, params, session)
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while mid not in self._pending:
                left = deadline - time.monotonic()
                if left <= 0 or getattr(self, "_closed", False):
                    raise BrowserError(f"no reply to {method} ({'Chromium exited' if getattr(self, '_closed', False) else 'timeout'})")
                self._cond.wait(left)
            reply = self._pending.pop(mid)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def wait_event(self, method: str, session: str | None, since: int, timeout: float | None = None) -> dict[str, Any]:
        """The first event `method` (of `session`) recorded at index >= `since`."""
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while True:
                for ev in self._events[since:]:
                    if ev["method"] == method and (session is None or ev.get("sessionId") == session):
                        return ev.get("params", {})
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"timeout waiting for {method}")
                self._cond.wait(left)

    def new_page(self, width: int = 1280, height: int = 800) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        self._pages[session] = page
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        return page


class Page:
    """One tab. `log` records what the page did since the last `goto`."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session
        self.log = PageLog()
        self.url = ""

    def _on_event(self, method: str, p: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.log.errors.append(str(d.get("exception", {}).get("description") or d.get("text")))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.log.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            self.log.errors.append(str(p["entry"].get("text")))
        elif method == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            if url != self.url and not url.startswith("data:"):  # data: URLs are inline, not network
                self.log.requests.append(url)
        elif method == "Page.javascriptDialogOpening":
            self.log.dialogs.append(f"{p.get('type')}: {p.get('message')}")
            self.browser.post("Page.handleJavaScriptDialog", {"accept": False}, self.session)

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, self.session)

    def goto(self, url: str, timeout: float | None = None) -> float:
        """Navigate and wait for the load event; returns the seconds it took."""
        self.log, self.url = PageLog(), url
        since = len(self.browser._events)
        t0 = time.perf_counter()
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"navigation to {url} failed: {result['errorText']}")
        self.browser.wait_event("Page.loadEventFired", self.session, since, timeout)
        return time.perf_counter() - t0

    def evaluate(self, expression: str) -> Any:
        """Value of a JavaScript expression (promises awaited)."""
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise BrowserError(f"evaluate failed: {d.get('exception', {}).get('description') or d.get('text')}")
        return r.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll until a JavaScript expression is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timeout waiting for {expression!r}")
            time.sleep(0.02)

    def click(self, x: float, y: float) -> None:
        """A real left click (mouse moved, pressed, released) at viewport coordinates."""
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def click_selector(self, selector: str) -> None:
        """Click the centre of the first element matching a CSS selector."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        if box is None:
            raise BrowserError(f"no element matches {selector!r}")
        self.click(*box)

    def type_into(self, selector: str, text: str) -> None:
        """Focus an input, replace its value by typing `text` (real input events)."""
        self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.focus(); e.select(); }})()")
        self.send("Input.insertText", {"text": text})

    def screenshot(self, path: Path, full_page: bool = False) -> None:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", params)["data"]
        Path(path).write_bytes(base64.b64decode(data))

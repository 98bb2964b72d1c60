"""Headless Chromium (Debian's `chromium` package) driven through the Chrome DevTools protocol: open a page, wait
until the JavaScript app has rendered the text a person would look for, take a screenshot."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect

CHROMIUM = "chromium"


def chromium_or_skip() -> str:
    """The chromium binary, installed with apt-get when missing (as root, or through passwordless sudo). Without it
    the test is skipped, except under CI=true, where it fails."""
    found = shutil.which(CHROMIUM)
    if found:
        return found
    become = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if shutil.which("apt-get") and (not become or shutil.which("sudo")):
        apt = [*become, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
        install = subprocess.run([*apt, "install", "-y", CHROMIUM], capture_output=True, text=True, timeout=900)
        if install.returncode:  # an outdated package list: refresh it once
            subprocess.run([*apt, "update"], capture_output=True, timeout=300)
            subprocess.run([*apt, "install", "-y", CHROMIUM], capture_output=True, timeout=900)
        found = shutil.which(CHROMIUM)
        if found:
            return found
    message = "no chromium and it could not be installed (`apt-get install -y chromium` as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class Chromium:
    """One headless browser with one tab; `open` a URL, `wait_for_text`, `screenshot`."""

    def __init__(self, profile: Path, width: int = 1600, height: int = 1000):
        binary = chromium_or_skip()
        self.closing = contextlib.ExitStack()
        self.process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # as root (CI containers) Chromium refuses to start with its sandbox
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError(f"chromium did not open its DevTools port (exit code {self.process.poll()})")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            page = next(target for target in json.load(response) if target["type"] == "page")
        self.socket = self.closing.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30))
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        """Send one DevTools command and return its result (events that arrive meanwhile are dropped)."""
        call_id = next(self.ids)
        self.socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def press_alt(self, code: str) -> None:
        """Alt and a key (a DOM KeyboardEvent code such as "KeyE"), as the UI's keyboard shortcuts expect."""
        for kind in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, modifiers=1, code=code, key=code[-1].lower())

    def text(self) -> str:
        """The page's rendered text, SVG labels included."""
        result = self.call("Runtime.evaluate", expression="document.body ? document.body.textContent : ''")
        return result["result"].get("value", "")

    def wait_for_text(self, expected: list[str], timeout_s: float = 45) -> str:
        """The page's text once every string of `expected` is in it; AssertionError naming the missing ones."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.text()
            missing = [item for item in expected if item not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"not on the page after {timeout_s} s: {missing}; the page shows: {text[:2000]}")
            time.sleep(0.5)

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self.closing.close()
        os.killpg(self.process.pid, signal.SIGTERM)  # its renderer and helper processes too
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

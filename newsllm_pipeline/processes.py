"""Long-running commands of a deployment (the Dagster daemon, a Celery worker) started for tests and benchmarks:
each as its own process group with its output in a log file, ready once a line shows in the log, stopped as a
whole group (the daemon's code server and the runs it launched, the worker's pool)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .settings import CHECKOUT

BIN = Path(sys.executable).parent


class LoggedProcess:
    """`command` as its own process group, stdout and stderr in `log`."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = CHECKOUT):
        self.command = command
        self.log = log
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_for(self, text: str, timeout_s: float = 120) -> float:
        """Seconds until `text` appeared in the log; RuntimeError (with the log's end) if the process ends first or
        `timeout_s` passes."""
        started = time.monotonic()
        while text not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() - started > timeout_s:
                state = "ended" if self.process.poll() is not None else f"ran {timeout_s:.0f} s"
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{Path(self.command[0]).name} {state} without logging {text!r}:\n{tail}")
            time.sleep(0.25)
        return time.monotonic() - started

    def stop(self, timeout_s: float = 60, stragglers_s: float = 5) -> None:
        """SIGTERM to the whole group (a clean shutdown), SIGKILL if it is still there after `timeout_s`. What of the
        group outlives its leader by `stragglers_s` is killed too: a Dagster code server waits for its heartbeat
        timeout before it exits, and one whose instance storage is gone by then never does."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + stragglers_s
        while group_alive(self.process.pid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                break
            time.sleep(0.1)
        self._log_file.close()

    def __enter__(self) -> LoggedProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def group_alive(group: int) -> bool:
    """Whether any process of the process group `group` is still there."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def dagster_daemon(home: Path, env: dict[str, str], log: Path | None = None) -> LoggedProcess:
    """`dagster-daemon run` on the project's workspace, with the instance in `home` (its dagster.yaml)."""
    return LoggedProcess(
        [str(BIN / "dagster-daemon"), "run", "-w", str(CHECKOUT / "workspace.yaml")],
        log or home / "daemon.log",
        env={**os.environ, **env, "DAGSTER_HOME": str(home)},
    )

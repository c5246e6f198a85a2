"""Shared fixtures for the tests that talk over DDS with real rclpy nodes (no mocks).

- ``ros_domain_id`` (session, autouse): a distinct ``ROS_DOMAIN_ID`` (1..100, from the pid) for
  this test run, put into ``os.environ`` before any ``rclpy.init`` so concurrent runs on one
  machine stay apart; discovery is kept on this host (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``).
- ``ros_env``: the environment for subprocesses (same domain id, same library paths).
- ``rclpy_context``: a fresh, initialised ``rclpy`` context, shut down after the test.
- ``spawn_ros_process``: starts a Python subprocess (``sys.executable``) with ``ros_env`` and
  always terminates it afterwards.
- ``ct_file_at``: writes the example CT resampled to a given spacing as NIfTI (nodes read files).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

HERE = Path(__file__).resolve().parent

_ROS_ENV_KEYS = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")


@pytest.fixture(scope="session", autouse=True)
def ros_domain_id() -> Iterator[int]:
    saved = {k: os.environ.get(k) for k in _ROS_ENV_KEYS}
    domain_id = 1 + os.getpid() % 100
    os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    try:
        yield domain_id
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def ros_env(ros_domain_id: int) -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(ros_domain_id)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def rclpy_context(ros_domain_id: int):
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    try:
        yield context
    finally:
        if context.ok():
            rclpy.shutdown(context=context)


class RosProcess:
    """A child Python process; a reader thread collects its stdout+stderr lines."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
        with self._new_line:
            self._eof = True
            self._new_line.notify_all()

    def wait_for_line(self, marker: str, timeout: float) -> None:
        """Wait for an output line containing ``marker``; fail with the output on timeout/exit."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new_line:
            while True:
                for line in self.lines[seen:]:
                    if marker in line:
                        return
                seen = len(self.lines)
                if self._eof:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(
                        f"subprocess {self.args} printed no {marker!r} within {timeout:.0f} s; "
                        f"output so far:\n{self.output()}"
                    )
                self._new_line.wait(timeout=left)
        self.proc.wait(timeout=5)
        pytest.fail(
            f"subprocess {self.args} exited (rc={self.proc.returncode}) before printing "
            f"{marker!r}; output:\n{self.output()}"
        )

    def output(self) -> str:
        with self._new_line:
            return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                # a clean stop takes 2-3 s on an idle 2-core machine; under load (other runs beside the
                # tests) tearing down torch and DDS took over 5 s, so allow 20 before killing
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def spawn_ros_process(ros_env: dict[str, str]) -> Iterator[Callable[..., RosProcess]]:
    procs: list[RosProcess] = []

    def spawn(*args: str) -> RosProcess:
        proc = RosProcess(list(args), ros_env)
        procs.append(proc)
        return proc

    try:
        yield spawn
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture(scope="session")
def ct_file_at(tmp_path_factory, small_ct) -> Callable[[float], Path]:
    """``ct_file_at(spacing_mm)``: the example CT resampled to ``spacing_mm`` as a NIfTI file (cached)."""
    import nibabel as nib

    from sphere_reg_ros.core.volume import resample

    files: dict[float, Path] = {}

    def make(spacing_mm: float) -> Path:
        if spacing_mm not in files:
            path = tmp_path_factory.mktemp("ct") / f"ct_{spacing_mm:g}mm.nii.gz"
            ct = resample(small_ct[0], spacing_mm)
            nib.save(nib.Nifti1Image(ct.data, ct.affine), str(path))
            files[spacing_mm] = path
        return files[spacing_mm]

    return make

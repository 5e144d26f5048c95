"""The background runner: JSON-lines progress parsed; cancel ends the child and its children quickly."""

import os
import sys
import textwrap
import time

import numpy as np
import psutil
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "NMAIExtension"))
from NMAIExtensionLib.runner import TaskRunner, run_in_process  # noqa: E402
from nmai import NMAIError, Volume  # noqa: E402
from nmai.io import read_volume, write_volume  # noqa: E402


def small_pet(tmp_path):
    arr = np.random.default_rng(0).gamma(3.0, 1000.0, size=(6, 8, 10)).astype(np.float32)
    return write_volume(Volume(arr, modality="PT", units="Bq/ml"), tmp_path / "pet.nii.gz")


def test_child_process_progress_and_result(tmp_path):
    out = tmp_path / "den.nii.gz"
    runner = TaskRunner(["denoise", str(small_pet(tmp_path)), "--method", "gaussian", "--fwhm", "5",
                          "--out", str(out)],
                        python=sys.executable).start()
    seen = []
    result = runner.wait(timeout=60, on_progress=lambda f, m: seen.append(f))
    assert result["outputs"]["denoised"] == str(out)
    assert runner.fraction == 1.0 and runner.returncode == 0 and runner.error is None
    assert read_volume(out).units == "Bq/ml"


def test_child_error_is_reported_as_message(tmp_path):
    runner = TaskRunner(["info", str(tmp_path / "missing.nii.gz")], python=sys.executable).start()
    with pytest.raises(NMAIError, match="no such file"):
        runner.wait(timeout=60)


def test_in_process_run_matches(tmp_path):
    out = tmp_path / "den.nii.gz"
    fractions = []
    result = run_in_process(["denoise", str(small_pet(tmp_path)), "--method", "gaussian", "--fwhm", "5",
                          "--out", str(out)],
                            progress=lambda f, m: fractions.append(f))
    assert result["outputs"]["denoised"] == str(out) and fractions[-1] == 1.0
    with pytest.raises(NMAIError, match="invalid engine arguments"):
        run_in_process(["denoise", "--no-such-option"])


FAKE_ENGINE = textwrap.dedent("""\
    #!/bin/sh
    # stands in for `python -m nmai --jsonl ...`: starts a grandchild, reports progress, then hangs
    sleep 120 &
    echo $! > "{pidfile}"
    echo '{{"type": "progress", "fraction": 0.25, "message": "working"}}'
    echo 'a line that is not JSON'
    trap '' TERM   # ignore SIGTERM, so the runner has to escalate to SIGKILL
    sleep 120
    """)


@pytest.mark.skipif(os.name == "nt", reason="POSIX process groups")
def test_cancel_kills_the_whole_tree_within_two_seconds(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_ENGINE.format(pidfile=pidfile))
    fake.chmod(0o755)
    runner = TaskRunner(["denoise"], python=str(fake)).start()
    deadline = time.monotonic() + 10
    while runner.fraction < 0.25 and time.monotonic() < deadline:
        runner.poll()
        time.sleep(0.02)
    assert runner.fraction == 0.25 and runner.message == "working"
    grandchild = psutil.Process(int(pidfile.read_text()))
    child = psutil.Process(runner._proc.pid)
    t0 = time.monotonic()
    runner.cancel()
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0
    for proc in (child, grandchild):
        gone = not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
        assert gone, f"process {proc.pid} survived cancel"
    assert runner.finished and runner.cancelled
    with pytest.raises(NMAIError, match="cancelled"):
        runner.wait(timeout=1)

"""The sweep's control, unit by unit (one end-to-end test of each is in
test_sweep_control.py): the signals that stop it and the exit code they leave, and the claim
on its run directory. (The time budget's: test_search.py.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.rundir import CLAIM, claimed
from orchestrator.signals import STOP, Interrupted, InterruptOnStop, signals_stop_studies


def wait_for(event: object, seconds: float = 2.0) -> None:
    end = time.time() + seconds
    while not event.is_set() and time.time() < end:  # type: ignore[attr-defined]
        time.sleep(0.01)


def test_a_first_signal_stops_the_studies_and_a_second_aborts(
    capsys: pytest.CaptureFixture,
) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    tune_flag = os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
    try:
        with signals_stop_studies() as stop:
            assert stop is STOP and not stop.is_set()
            assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"  # ours, not Tune's
            os.kill(os.getpid(), signal.SIGTERM)
            wait_for(stop)
            assert stop.is_set() and stop.signum == signal.SIGTERM
            assert "SIGTERM: stopping the running trials" in capsys.readouterr().err
            with pytest.raises(Interrupted) as second:
                os.kill(os.getpid(), signal.SIGHUP)
                time.sleep(1)  # the handler raises before this ends
            assert second.value.signum == signal.SIGHUP
        assert {s: signal.getsignal(s) for s in before} == before  # handlers restored
        assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ
    finally:
        if tune_flag is not None:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_flag


def test_a_stop_interrupts_tunes_loop_as_ctrl_c_does() -> None:
    received = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        with signals_stop_studies():
            InterruptOnStop().on_step_begin(0, [])
            assert received == []  # no stop yet: Tune's loop goes on
            STOP.set()
            InterruptOnStop().on_step_begin(1, [])
            end = time.time() + 2
            while not received and time.time() < end:
                time.sleep(0.01)
        assert received == [signal.SIGUSR1]  # what Tune's `fit` handles as Ctrl-C
    finally:
        signal.signal(signal.SIGUSR1, previous)
        STOP.clear()


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_a_stopped_command_exits_128_plus_the_signal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, signum: int, code: int
) -> None:
    def stopped(args: object) -> int:  # what run_sweep raises once the table is written
        raise Interrupted(signum)

    monkeypatch.setattr(cli, "cmd_sweep", stopped)
    assert cli.main(["sweep", "--smoke"]) == code
    assert f"interrupted ({signal.Signals(signum).name})" in capsys.readouterr().err


def test_a_run_directory_is_held_by_one_sweep_and_freed_after(tmp_path: Path) -> None:
    run_dir = tmp_path / "night"
    with claimed(run_dir):
        holder = json.loads((run_dir / CLAIM).read_text())
        assert holder == {"host": socket.gethostname(), "pid": os.getpid()}
        with pytest.raises(ValueError, match=r"a sweep is running in it \(process \d+ on "):
            with claimed(run_dir):
                pass
    assert not (run_dir / CLAIM).exists()
    assert [p.name for p in run_dir.iterdir()] == []  # no claim file left behind


def test_the_claim_of_a_dead_sweep_is_taken_over(tmp_path: Path) -> None:
    run_dir = tmp_path / "night"
    run_dir.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a killed sweep's process: gone, its claim left behind
    (run_dir / CLAIM).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    with claimed(run_dir):
        assert json.loads((run_dir / CLAIM).read_text())["pid"] == os.getpid()
    elsewhere = {"host": "another-host", "pid": dead.pid}  # alive there, for all we know
    (run_dir / CLAIM).write_text(json.dumps(elsewhere))
    with pytest.raises(ValueError, match="another-host"):
        with claimed(run_dir):
            pass

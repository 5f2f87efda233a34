"""A sweep's stopping signals: a first Ctrl-C, SIGTERM or SIGHUP interrupts the running Tune
experiment as Tune documents it, so the table of what finished is still written and
`--resume` goes on; a second aborts (`Interrupted`, exit 128 + the signal)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from ray import tune


class StopSignal(threading.Event):
    """Set by the sweep's first stopping signal (`signals_stop_studies`); `signum` says
    which."""

    signum: int = signal.SIGINT


class Interrupted(KeyboardInterrupt):
    """The sweep was stopped by a signal (after writing what finished, or aborted by a
    second one): the command exits with 128 + `signum`, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP = StopSignal()
# what stops a sweep as Ctrl-C does: `kill`, systemd, a scheduler's preemption (SIGTERM), a
# closed terminal or tmux session (SIGHUP)
STOPPING = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


class InterruptOnStop(tune.Callback):
    """Once `STOP` is set, interrupts the running experiment as Tune documents it (SIGUSR1,
    which Tune handles as Ctrl-C while `fit` runs): the running trials stop, Tune saves its
    state with them unfinished and the search not done, so `--resume` restarts them from
    their checkpoints and goes on searching. (A `Stopper`'s `stop_all` would mark the
    search finished.) Checked at every step of Tune's loop, so a signal that came before
    `fit` installed Tune's handler still ends it; only in the main thread, where Tune
    installs its handler. Holds no state: it pickles into Tune's experiment state and works
    again after `--resume`."""

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if STOP.is_set() and threading.current_thread() is threading.main_thread():
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's handler ends the loop after this step


@contextlib.contextmanager
def signals_stop_studies() -> Iterator[StopSignal]:
    """While the sweep runs, a first Ctrl-C, SIGTERM or SIGHUP sets `STOP` (the event it
    yields, with the signal), which interrupts the experiment through `InterruptOnStop`; the
    table, exports and report of what finished are still written. A second signal aborts.
    (Tune's own SIGINT handler takes neither SIGTERM nor SIGHUP, and would not tell the
    sweep that it stopped: a stopped trial would look like one that ASHA stopped.)"""
    STOP.clear()
    STOP.signum = signal.SIGINT
    if threading.current_thread() is not threading.main_thread():
        yield STOP  # signals reach the main thread only
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if STOP.is_set():
            raise Interrupted(signum)
        STOP.signum = signum
        STOP.set()
        print(
            f"{STOPPING[signal.Signals(signum)]}: stopping the running trials; the table of "
            "what finished follows (Ctrl-C again to abort)",
            file=sys.stderr,
            flush=True,
        )

    previous = {s: signal.signal(s, on_signal) for s in STOPPING}
    previous[signal.SIGUSR1] = signal.getsignal(signal.SIGUSR1)  # Tune's `fit` takes it over
    tune_handler = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield STOP
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if tune_handler is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_handler

"""A stage process's bond with whoever launched it, and its signals: stdlib and psutil only,
so that `python -m pipeline.<stage>` arms it before any heavy import (`pipeline/__init__.py`).

- `die_with_parent`: the stage gets SIGTERM when `dvc repro` (or the shell between) dies, and
  exits at once if it is already gone: a stage must never write outputs behind DVC's back,
  where a new `dvc repro` would cache them half-made.
- `interrupt_on_sigterm`: SIGTERM raises KeyboardInterrupt, as SIGINT does, so one clean-up
  path (staging files removed, MLflow run KILLED, Ray shut down) serves both.
- `skip_final_collection`: the process ends without the garbage collector's last walk over
  every object torch, Ray and MLflow made.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import os
import signal
import sys
import threading

import psutil

INTERRUPTED = 130  # the shell's code for a command ended by SIGINT
PARENT_POLL_S = 0.2  # how often the launchers above a shell are checked

def interruption(exc: BaseException) -> str | None:
    """The signal that `exc` stands for (KeyboardInterrupt: SIGINT or our SIGTERM; SystemExit(15):
    SIGTERM while ray.init's own handler, which calls sys.exit, was in place), else None."""
    if isinstance(exc, KeyboardInterrupt):
        return _received[-1] if _received else "SIGINT"  # Ray may re-raise it without its args
    if isinstance(exc, SystemExit) and exc.code == signal.SIGTERM:
        return "SIGTERM"
    return None


def skip_final_collection() -> None:
    """At exit, after the atexit handlers registered before this one (Ray's shutdown, MLflow's
    end of run, logging's flush), move every object into the collector's permanent generation
    (`gc.freeze`), which the interpreter's final collections never scan. That walk took 1.6 to
    1.9 s at the end of every stage process on 2 cores (py-spy: `gc_collect_main` after the
    last atexit handler; 0.3 s with this). Objects are still freed by reference counting as the
    modules are cleared; only objects in reference cycles stay for the OS to reclaim, and no
    stage keeps work for their finalizers: every output is written and closed before `run`
    returns (`btbnet.io.atomic_output`)."""
    atexit.register(gc.freeze)


def interrupt_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt("SIGTERM"), as SIGINT does: the same clean-up runs."""
    signal.signal(signal.SIGTERM, _raise_interrupt)


_received: list[str] = []  # SIGTERMs turned into KeyboardInterrupt


def _raise_interrupt(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    _received.append(signal.Signals(signum).name)
    raise KeyboardInterrupt(_received[-1])


SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "ash", "busybox", "fish"})


def launchers() -> list[tuple[int, int]]:
    """(pid, parent pid) of the processes that launched this one: the parent, and through any
    shell wrappers (`dvc repro` runs a stage as `$SHELL -c cmd`, and dash does not exec the
    command) the process that ran them, up to the first that is not a shell."""
    chain, proc = [], psutil.Process().parent()
    while proc is not None:
        chain.append((proc.pid, proc.ppid()))
        if proc.name() not in SHELLS:
            break
        proc = proc.parent()
    return chain


_armed: list[bool] = []  # die_with_parent ran in this process


def die_with_parent() -> None:
    """Get SIGTERM when the process that launched the stage (`dvc repro`, a shell) dies.

    DVC ignores SIGINT while a stage runs but dies on SIGTERM without passing it on, so a
    stage would go on and write its outputs behind DVC's back. Linux signals the death of the
    parent itself (prctl PR_SET_PDEATHSIG); a thread watches the rest of `launchers()`: a
    process whose parent pid changed was orphaned, i.e. the launcher above it died. A stage
    whose launcher is already gone stops now. Idempotent: the first call arms it.
    """
    if _armed:
        return
    _armed.append(True)
    chain = launchers()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    def orphaned() -> bool:
        if os.getppid() != chain[0][0]:
            return True
        for pid, ppid in chain[:-1]:  # the shells between us and the launcher
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).ppid() == ppid:
                    continue
            return True
        return False

    def watch() -> None:
        while not orphaned():
            threading.Event().wait(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    if orphaned():  # a launcher died before the watch was armed
        os.kill(os.getpid(), signal.SIGTERM)
    elif len(chain) > 1 or not sys.platform.startswith("linux"):
        threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def started_as_stage(argv: list[str]) -> bool:
    """Whether `argv` (the interpreter's command line, `sys.orig_argv`) is `python … -m
    pipeline.<module>`: a stage's own process, not a program that imports the package."""
    return any(arg == "-m" and i + 1 < len(argv) and argv[i + 1].startswith("pipeline.") for i, arg in enumerate(argv))

"""Ctrl-C stops pangu cleanly: `runtime.handle_interrupts` gives SIGINT a Python handler even where the
parent ignored it (a CI job started in the background), and keeps it after MindSpore, which swaps in a
C-level handler that re-sends SIGINT as SIGTERM whenever it runs, has run."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from pangu_cli import runtime

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signal delivery")


@pytest.fixture
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def c_sigint_handler() -> int | None:
    """The address of the C-level SIGINT handler (the first field of `struct sigaction`)."""
    import ctypes

    action = ctypes.create_string_buffer(512)
    assert ctypes.CDLL(None).sigaction(int(signal.SIGINT), None, action) == 0
    return ctypes.c_void_p.from_buffer(action).value


def wait_for(predicate, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_an_inherited_ignored_sigint_becomes_a_keyboard_interrupt(ms, restore_handlers):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a non-interactive shell gives a background job
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    runtime.handle_interrupts()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signum)
            time.sleep(1)  # the handler runs at the next bytecode, long before this ends


def test_a_handler_already_in_place_is_kept(ms, restore_handlers):
    def mine(signum, frame):
        pass

    signal.signal(signal.SIGTERM, mine)
    runtime.handle_interrupts()
    assert signal.getsignal(signal.SIGTERM) is mine


def test_ctrl_c_reaches_python_as_sigint_after_mindspore_ran(ms, restore_handlers):
    seen: list[int] = []
    previous = runtime.handle_interrupts(lambda signum, frame: seen.append(signum))
    assert set(previous) == {signal.SIGINT, signal.SIGTERM}
    python_handler = c_sigint_handler()
    # A gradient makes MindSpore install its SIGINT handler (kill(getpid(), SIGTERM)) at C level.
    grad = ms.grad(lambda x: (x * x).sum())
    assert grad(ms.Tensor([1.0, 2.0])).asnumpy().tolist() == [2.0, 4.0]
    assert wait_for(lambda: c_sigint_handler() == python_handler), "MindSpore's SIGINT handler stayed"
    os.kill(os.getpid(), signal.SIGINT)  # process-directed, like Ctrl-C
    assert wait_for(lambda: seen), "the signal never reached Python"
    assert [signal.Signals(s).name for s in seen] == ["SIGINT"]

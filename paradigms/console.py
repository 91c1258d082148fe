"""A console whose reader went away does not end the work it reports on.

A run or a study prints progress on stdout and stderr. When the reader of a pipe exits (``tiedlab-vision -m ... |
head``, a killed ``tee``) a write raises BrokenPipeError; after a terminal hung up on a run that goes on (to its
checkpoint), EIO. Unguarded, either failed the run in flight (its traceback recorded) and
every later run of a multirun. ``guard`` wraps both streams: the first such error points the stream's file
descriptor at ``os.devnull`` (so that nothing written later, by this process or by a buffer flushed at exit, fails)
and calls ``on_close`` once with a line that says so; the work goes on and what it records (metrics.json, history,
logs) is unchanged. Other write errors (a full disk behind a redirect) are raised as before.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any, Callable, TextIO

CLOSED_ERRNOS = (errno.EPIPE, errno.EIO)  # the reader exited; the terminal hung up


class GuardedStream:
    """``stream`` (a text stream with a file descriptor) that turns a closed reader into silence."""

    def __init__(self, stream: TextIO, name: str, on_close: Callable[[str], None]) -> None:
        self._stream = stream
        self._name = name
        self._on_close = on_close
        self.closed_reason = ""  # why the console went away ("" while it is there)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as err:
            self._divert(err)
            return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as err:
            self._divert(err)

    def _divert(self, err: OSError) -> None:
        if err.errno not in CLOSED_ERRNOS:
            raise err
        if not self.closed_reason:
            self.closed_reason = f"{self._name} closed ({os.strerror(err.errno)})"
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, self._stream.fileno())
            finally:
                os.close(null)
            self._on_close(self.closed_reason)
        try:
            self._stream.flush()  # what the failed write left in the buffer goes to os.devnull now
        except OSError:
            pass

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...: the stream's own
        return getattr(self._stream, name)


_NOTES: list[str] = []  # why streams closed, in order (``closed``)


def guard(on_close: Callable[[str], None] | None = None) -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` (once per process; later calls change nothing). ``on_close`` is
    called with a one-line reason the first time each stream's reader is found gone."""

    def note(reason: str) -> None:
        _NOTES.append(reason)
        if on_close is not None:
            on_close(reason)

    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, GuardedStream) and hasattr(stream, "fileno"):
            try:
                stream.fileno()
            except (OSError, ValueError):  # a stream without a descriptor (captured by a test runner): leave it
                continue
            setattr(sys, name, GuardedStream(stream, name, note))


def closed() -> list[str]:
    """Why this process's console streams closed ("stdout closed (Broken pipe)"), or [] while both are open."""
    return list(_NOTES)

"""Opening a path the user named as a file (a spec, a data file) without hanging on what is not one."""

from __future__ import annotations

import os
import stat
from typing import BinaryIO


class NotRegularFile(OSError):
    """The path is a directory, FIFO, device or socket; the message says which."""


def open_regular_file(path: str) -> BinaryIO:
    """`path` opened for binary reading. Raises NotRegularFile for anything but a regular file: opening a
    FIFO waits for a writer (forever, for `mkfifo f.yaml`), and a device can stream without end."""
    # O_NONBLOCK: opening a FIFO for reading returns at once, so it can be refused
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "a special file")
            raise NotRegularFile(f"not a regular file but {kind}")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def describe_head(head: bytes) -> str:
    """What a file is, from its first bytes, for an error that says what was found instead of the expected
    format: "an empty file", "an HDF5 file", "a single .npy array", "a text file" or "some other binary file"."""
    if not head:
        return "an empty file"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file"
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file"
    return "some other binary file"

"""One exception family for every user-facing failure.

Each error is one line that names the problem and the fix; the CLI prints it and exits non-zero,
the REST service turns it into a JSON body with `status` as the HTTP code and `code` as a stable
machine-readable name.
"""
from __future__ import annotations


class EmbedstoreError(Exception):
    """Base class: a one-line message meant for the user."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return str(self)


class BadInput(EmbedstoreError):
    """The user's input (file, vector, filter, argument) is unusable."""

    status, code = 400, "bad_input"


class VideoError(BadInput):
    """A video file cannot be read or has unusable content."""

    status, code = 415, "bad_video"


class TooManyFrames(VideoError):
    """A video longer than the frame limit of whoever asked (an upload over the service's max_frames)."""


class NotFound(EmbedstoreError):
    """An id, encoder, index or file that does not exist."""

    status, code = 404, "not_found"


class Conflict(EmbedstoreError):
    """The store is in a state that forbids the request (stale index, dimension mismatch)."""

    status, code = 409, "conflict"


class TooLarge(EmbedstoreError):
    """An upload or request over a configured limit."""

    status, code = 413, "too_large"


class WeightsNotFound(EmbedstoreError):
    """No checkpoint where the resolution path looked; says which files and how to fetch them."""

    status, code = 409, "weights_not_found"


class Busy(EmbedstoreError):
    """The service is at capacity; the client should retry later."""

    status, code = 503, "busy"


class OutOfMemory(EmbedstoreError):
    """The device ran out of memory on one request or batch; the process goes on (the cache is freed)."""

    status, code = 503, "out_of_memory"


class Locked(EmbedstoreError):
    """Another process holds the store in a way that excludes this open (a writer, or readers for a writer)."""

    status, code = 409, "locked"


class DiskFull(EmbedstoreError):
    """A write ran out of space (or hit a read-only folder); what was being written was left out whole."""

    status, code = 507, "disk_full"

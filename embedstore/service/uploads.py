"""Uploads: a multipart body streamed into private temp files (size-checked as they grow), and the names
clients gave them, which are the only names the service ever shows for them.
"""
from __future__ import annotations

import io
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from embedstore.errors import BadInput, EmbedstoreError, TooLarge, VideoError
from embedstore.video.read import VIDEO_SUFFIXES

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 16


@dataclass
class Upload:
    """A file a client sent: where it lies on the server (never shown) and the name it had (for messages)."""

    name: str
    path: Path


@contextmanager
def named_as(path: Path | str, name: str) -> Iterator[None]:
    """Library errors name the file they read; say `name` (the client's file name, a video id) instead."""
    try:
        yield
    except EmbedstoreError as exc:
        raise type(exc)(exc.message.replace(str(path), name)) from None


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)
    file: io.BufferedWriter | None = None
    path: Path | None = None
    size: int = 0
    head: bytes = b""


class FormReader:
    """Streams a multipart/form-data body: file parts straight into private temp files, size-checked as
    they grow (TooLarge the moment one passes the limit), other fields into short strings."""

    def __init__(self, folder: Path, files: tuple[str, ...], max_file_bytes: int):
        self.folder, self.files, self.limit = folder, files, max_file_bytes
        self.fields: dict[str, str] = {}
        self.uploads: dict[str, Upload] = {}
        self.parts: list[_Part] = []
        self.header_name, self.header_value, self.disposition = b"", b"", b""

    async def read(self, request: Request) -> None:
        kind, params = parse_options_header(request.headers.get("content-type"))
        if kind != b"multipart/form-data" or b"boundary" not in params:
            raise BadInput(f"send multipart/form-data with the video in the file field{'s' if len(self.files) > 1 else ''} "
                           f"{', '.join(self.files)}")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > len(self.files) * self.limit + MAX_PARTS * MAX_FIELD_BYTES:
            raise TooLarge(f"the upload is {int(length)} bytes; this service takes videos of up to {self.limit} bytes")
        parser = MultipartParser(params[b"boundary"], {
            "on_part_begin": self.part_begin, "on_header_field": self.header_field, "on_header_value": self.header_value_,
            "on_header_end": self.header_end, "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data, "on_part_end": self.part_end})
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except FormParserError as exc:
            raise BadInput(f"the multipart body is malformed ({' '.join(str(exc).split())[:120]})") from None
        missing = [name for name in self.files if name not in self.uploads]
        if missing:
            raise BadInput(f"no file in the field{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                           f"send the video as a file part")

    def discard(self) -> None:
        for part in self.parts:
            if part.file is not None:
                part.file.close()
            if part.path is not None:
                part.path.unlink(missing_ok=True)
        for upload in self.uploads.values():
            upload.path.unlink(missing_ok=True)

    # python-multipart callbacks, called synchronously from parser.write
    def part_begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise BadInput(f"more than {MAX_PARTS} form fields")
        self.parts.append(_Part())

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def header_value_(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name, self.header_value = b"", b""

    def headers_finished(self) -> None:
        part = self.parts[-1]
        _, options = parse_options_header(self.disposition)
        self.disposition = b""
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            return
        if part.name not in self.files or any(p.name == part.name and p.file for p in self.parts[:-1]):
            raise BadInput(f"unexpected file field {part.name!r}; send one video in each of {', '.join(self.files)}")
        part.filename = display_name(options[b"filename"].decode("utf-8", "replace"))
        handle, name = tempfile.mkstemp(dir=self.folder)
        part.path, part.file = Path(name), open(handle, "wb")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        part, chunk = self.parts[-1], data[start:end]
        part.size += len(chunk)
        if part.file is None:
            if part.size > MAX_FIELD_BYTES:
                raise TooLarge(f"form field {part.name!r} is over {MAX_FIELD_BYTES} bytes")
            part.data += chunk
            return
        if part.size > self.limit:
            raise TooLarge(f"{part.filename} is over this service's upload limit of {self.limit} bytes")
        if len(part.head) < 132:
            part.head += chunk[: 132 - len(part.head)]
        part.file.write(chunk)

    def part_end(self) -> None:
        part = self.parts[-1]
        if part.file is None:
            self.fields[part.name] = part.data.decode("utf-8", "replace")
            return
        part.file.close()
        suffix = sniff_suffix(part.head) or video_suffix(part.filename)
        if suffix is None:
            raise VideoError(f"{part.filename} is not a video; upload an AVI, MP4 or DICOM file")
        path = part.path.rename(part.path.with_suffix(suffix))
        part.path = None  # now owned by self.uploads
        self.uploads[part.name] = Upload(part.filename, path)


def display_name(filename: str) -> str:
    """The last component of a client's file name, printable and short: only ever shown, never opened."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:128] or "upload"


def sniff_suffix(head: bytes) -> str | None:
    """The container from its first bytes: DICOM preamble, RIFF AVI, ISO-BMFF (MP4/MOV)."""
    if head[128:132] == b"DICM":
        return ".dcm"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return ".avi"
    if head[4:8] == b"ftyp":
        return ".mp4"
    return None


def video_suffix(filename: str) -> str | None:
    suffix = Path(filename).suffix.lower()
    return suffix if suffix in VIDEO_SUFFIXES else None

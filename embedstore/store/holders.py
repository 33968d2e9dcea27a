"""Who holds a store: one-line lock-conflict messages instead of DuckDB's traceback.

DuckDB takes an exclusive file lock for a read-write connection and a shared one for read-only
connections, so readers (search, info, serve, ...) share a store with each other and never with a
writer. A writer records itself in `writer.json` (pid, command, time) while it has the store open;
a conflict names the holding command from that file, or from /proc/<pid>/cmdline for a reader.
"""
from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from embedstore.errors import Locked

INFO_FILE = "writer.json"
_PID = re.compile(r"\(PID (\d+)\)")


def command_name(argv: list[str]) -> str:
    """`embedstore <command>` from a process's argument list, else its program name."""
    for i, arg in enumerate(argv):
        if arg == "embedstore" or arg.endswith(("/embedstore", "embedstore/__main__.py")):
            sub = next((a for a in argv[i + 1 :] if not a.startswith("-")), None)
            return f"embedstore {sub}" if sub else "embedstore"
    return Path(argv[0]).name if argv else "a process"


def record_writer(folder: Path) -> Path:
    """Write writer.json for this process (best effort: a failure only makes conflict messages vaguer)."""
    path = folder / INFO_FILE
    info = {"pid": os.getpid(), "command": command_name(sys.argv),
            "opened_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    try:
        tmp = path.with_name(f"{INFO_FILE}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, path)
    except OSError:
        pass
    return path


def forget_writer(folder: Path) -> None:
    path = folder / INFO_FILE
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def holder(folder: Path, pid: int | None) -> tuple[str, bool]:
    """(the holding command, whether it is a recorded writer) for the pid DuckDB named."""
    try:
        info = json.loads((folder / INFO_FILE).read_text())
        if pid is None or info.get("pid") == pid:
            return info.get("command") or "a writer", True
    except (OSError, ValueError):
        pass
    if pid is not None:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            return command_name([a.decode("utf-8", "replace") for a in argv if a]), False
        except OSError:
            pass
    return "another process", False


def locked_error(folder: Path, exc: Exception, read_only: bool) -> Locked | None:
    """The one-line Locked error for DuckDB's lock-conflict exception, None for any other error."""
    if "Could not set lock" not in str(exc) and "Conflicting lock" not in str(exc):
        return None
    match = _PID.search(str(exc))
    pid = int(match.group(1)) if match else None
    command, writer = holder(folder, pid)
    who = f"`{command}`" + (f" (PID {pid})" if pid else "")
    if read_only or writer:
        what = f"{who} is writing to store {folder}; wait for it to finish or stop it, then retry"
    else:
        what = f"{who} has store {folder} open; a writer needs it alone: stop that process first, then retry"
    return Locked(f"{what} (read-only commands such as search, similar, info, export and serve share a store "
                  f"with each other, never with a writer)")

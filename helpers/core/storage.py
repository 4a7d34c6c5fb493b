"""Safe file writes and content hashes: every file the suite writes is written atomically."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from helpers.core.errors import NotWritableError, RunInProgressError  # noqa: F401 (re-exported)


def ensure_writable_dir(path: Path | str, purpose: str, env_var: str | None = None) -> Path:
    """Create ``path`` if needed and prove it is writable, so long work never fails at the final write."""
    path = Path(path)
    hint = f"; set {env_var} to a writable folder" if env_var else ""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as e:
        raise NotWritableError(f"{purpose} folder {path} is not writable ({e.strerror or e}){hint}") from e
    return path


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write to a temporary file beside ``path``, fsync, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; collaborators get what the umask allows
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if e.errno == errno.ENOSPC:  # name the file and what it needed; nothing half-written is left
            free = shutil.disk_usage(path.parent).free
            raise OSError(errno.ENOSPC, f"no space left to write {path} ({len(data):,} bytes needed, "
                                        f"{free:,} free on its filesystem); free space or point CLIPLAB_OUT / "
                                        "CLIPLAB_CACHE elsewhere") from e
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj, path: Path | str) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


@contextlib.contextmanager
def atomic_folder(path: Path | str):
    """Yield an empty temporary folder beside ``path``; when the block completes it replaces ``path``
    (a model saved by its library's ``save_pretrained``-like call is never seen half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def file_lock(path: Path | str):
    """Exclusive advisory lock on ``<path>.lock`` so concurrent runs append records one at a time."""
    lock_path = Path(str(path) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def owned_folder(folder: Path | str, what: str = "run"):
    """Hold ``.<folder>.owner.lock`` (beside it) for as long as this process works in ``folder``; a second process
    asking for it fails at once with a message naming the owner's pid and command (two runs of the same
    configuration never share, adopt or overwrite each other's half-written files)."""
    import sys

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.owner.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "another process"
            raise RunInProgressError(f"{folder} belongs to a {what} in progress ({owner}); wait for it to finish "
                                     "or stop it, then run again (it resumes from its checkpoint)") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}: {' '.join(sys.argv)[:300]}")
        f.flush()
        try:
            yield folder
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def atomic_append_line(path: Path | str, line: str) -> None:
    """Append one line under a lock by rewriting the file atomically (records are small)."""
    path = Path(path)
    with file_lock(path):
        old = path.read_bytes() if path.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        atomic_write_bytes(path, old + line.rstrip("\n").encode("utf-8") + b"\n")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj) -> str:
    """Stable hash of a JSON-able object (keys sorted): the basis of every cache key."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode("utf-8"))


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path | str) -> str:
    """sha256 of a file, memoised on (path, size, mtime) so a 350 MB checkpoint is hashed once per process."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def sha256_state_dict(state_dict: dict[str, torch.Tensor]) -> str:
    """Content hash of model weights held in memory (for ``scratch:`` models and fine-tuned ones)."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous().reshape(-1)
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(state_dict[name].shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()

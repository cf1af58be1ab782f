"""Checkpoints: `<tag>.npz` (arrays) + `<tag>.json` (everything else). No pickle anywhere.

Both files are written to a temporary name, flushed to disk and renamed, the JSON last:
a checkpoint exists only once its JSON does, so a crash or kill at any moment leaves the
previous checkpoints whole and loadable. The JSON records the SHA-256 of its .npz, so a
truncated or corrupted weights file is found before it is used.
"""
import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
import uuid

import numpy as np

_TAG = re.compile(r"^(\d+)(?:-(\d+))?\.json$")
TMP_PREFIX = ".tmp-"
LOCK_NAME = ".lock"
_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(ValueError):
    pass


class CheckpointWriteError(CheckpointError):
    """Saving failed (disk full, read-only folder, ...); the previous checkpoint is intact."""


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`, with its extension (for writers that want a path:
    Pillow, np.save, memmaps). When the block ends it is synced to disk and renamed over
    `path`; on any error or interrupt it is removed, so nobody sees a half-written file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=os.path.basename(path), dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)      # mkstemp's 0600 would hide results from the user's group
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write(path, write):
    """`write(file)` into a temporary file that replaces `path` only once it is whole."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def write_text(path, text):
    """Replace a text file atomically (a kill leaves the old or the new one, never half)."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def sha256_of(path, chunk=1 << 22):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def tag_for(epoch, batch=None):
    """'3' after epoch 3; '3-120' when stopped after 120 batches of epoch 4 (3 complete)."""
    return f"{epoch}" if not batch else f"{epoch}-{batch}"


def save(run_dir, tag, arrays, meta):
    """Write `<tag>.npz` + `<tag>.json`; returns the JSON path.

    Any OSError (disk full, read-only folder, ...) becomes CheckpointWriteError; what was
    half-written is removed and every earlier checkpoint stays as it was."""
    npz_path = os.path.join(run_dir, f"{tag}.npz")
    json_path = os.path.join(run_dir, f"{tag}.json")
    # the same id in both files: a pair torn by a crash while overwriting a tag is detected
    ident = uuid.uuid4().hex
    fresh = not os.path.exists(npz_path)
    try:
        os.makedirs(run_dir, exist_ok=True)
        _atomic_write(npz_path, lambda f: np.savez(f, __id__=np.array(ident), **arrays))
        text = json.dumps(dict(meta, id=ident, sha256=sha256_of(npz_path)), indent=1, sort_keys=True)
        _atomic_write(json_path, lambda f: f.write(text.encode()))
    except OSError as e:
        if fresh and os.path.exists(npz_path) and not os.path.exists(json_path):
            try:                           # an arrays file with no sidecar is no checkpoint
                os.unlink(npz_path)
            except OSError:
                pass
        reason = e.strerror or str(e)
        if e.errno == errno.ENOSPC:
            reason += " (free some space or choose another --out)"
        elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            reason += " (the folder is not writable: choose another --out)"
        raise CheckpointWriteError(f"cannot write checkpoint {json_path}: {reason}") from None
    return json_path


def list_checkpoints(run_dir):
    """Checkpoints in `run_dir` with both files present, oldest first, as JSON paths."""
    found = []
    for name in os.listdir(run_dir):
        m = _TAG.match(name)
        if m and os.path.exists(os.path.join(run_dir, name[:-5] + ".npz")):
            found.append(((int(m.group(1)), int(m.group(2) or 0)), os.path.join(run_dir, name)))
    return [p for _, p in sorted(found)]


def tag_of(json_path):
    """(epoch, batch) of a checkpoint's JSON path: (3, 0) for 3.json, (3, 120) for 3-120.json."""
    m = _TAG.match(os.path.basename(json_path))
    if not m:
        raise ValueError(f"not a checkpoint name: {json_path}")
    return int(m.group(1)), int(m.group(2) or 0)


def prune(run_dir, newest, keep, best_epoch=None):
    """Delete the run's older checkpoints, keeping the last `keep` epoch checkpoints, the one of
    `best_epoch` and `newest` (the JSON path just written, whole: call only after its save and
    the metrics succeeded, holding the folder's lock). Mid-epoch checkpoints older than
    `newest` go too; anything after `newest` (another attempt's, to be overwritten) is left
    alone. Each is deleted JSON first, so a crash mid-way leaves a stray .npz, never a
    checkpoint without its arrays. Returns the JSON paths deleted (failures are passed over)."""
    if keep is None:
        return []
    newest_tag = tag_of(newest)
    older = [p for p in list_checkpoints(run_dir) if tag_of(p) < newest_tag]
    epochs = [p for p in older if tag_of(p)[1] == 0]
    n = keep - 1 if newest_tag[1] == 0 else keep     # an epoch's `newest` is one of the `keep`
    kept = set(epochs[len(epochs) - n:]) if n > 0 else set()
    if best_epoch is not None:
        kept |= {p for p in epochs if tag_of(p)[0] == best_epoch}
    deleted = []
    for json_path in older:
        if json_path in kept:
            continue
        try:
            os.unlink(json_path)
        except OSError:
            continue
        deleted.append(json_path)
        try:
            os.unlink(json_path[:-5] + ".npz")
        except OSError:
            pass
    return deleted


def verify(json_path):
    """The checkpoint's metadata if its pair is whole; CheckpointError saying what is wrong."""
    npz_path = json_path[:-5] + ".npz"
    try:
        with open(json_path, encoding="utf-8") as f:
            meta = json.load(f)
    except OSError as e:
        raise CheckpointError(f"{json_path}: cannot read: {e.strerror}") from None
    except ValueError:
        raise CheckpointError(f"{json_path}: not valid JSON (truncated or corrupted)") from None
    if not isinstance(meta, dict) or "id" not in meta:
        raise CheckpointError(f"{json_path}: not a checkpoint sidecar (no id)")
    if not os.path.exists(npz_path):
        raise CheckpointError(f"{npz_path}: missing (its sidecar {os.path.basename(json_path)} is here)")
    expected = meta.get("sha256")
    if expected is not None:
        try:
            actual = sha256_of(npz_path)
        except OSError as e:
            raise CheckpointError(f"{npz_path}: cannot read: {e.strerror}") from None
        if actual != expected:
            raise CheckpointError(f"{npz_path}: its SHA-256 does not match the one recorded in "
                                  f"{os.path.basename(json_path)}: the file is truncated, corrupted "
                                  "or from another save")
    return meta


def resolve(path, skipped=None):
    """A run folder (its newest whole checkpoint) or one checkpoint's .json/.npz -> the .json path.

    In a folder, checkpoints that fail `verify` are passed over; with a list `skipped`,
    (path, reason) of each is appended to it."""
    if os.path.isdir(path):
        for json_path in reversed(list_checkpoints(path)):
            try:
                verify(json_path)
                return json_path
            except CheckpointError as e:
                if skipped is not None:
                    skipped.append((json_path, str(e)))
        extra = (f" ({len(skipped)} damaged {'one' if len(skipped) == 1 else 'ones'} passed over)"
                 if skipped else "")
        raise CheckpointError(f"{path}: no usable checkpoint in this folder{extra} "
                              "(expected <epoch>.json + <epoch>.npz)")
    base, ext = os.path.splitext(path)
    if ext in (".json", ".npz") and os.path.exists(base + ".json") and os.path.exists(base + ".npz"):
        return base + ".json"
    raise CheckpointError(f"{path}: not a checkpoint (give a run folder, or a <epoch>.json/.npz pair)")


def load(path, skipped=None):
    """(arrays, meta) of a checkpoint given as a run folder or a checkpoint file.

    meta["path"] is the JSON path used; see `resolve` for `skipped`."""
    json_path = resolve(path, skipped)
    meta = verify(json_path)
    npz_path = json_path[:-5] + ".npz"
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{npz_path}: cannot read checkpoint arrays: {e}") from None
    except Exception as e:         # zipfile.BadZipFile, zlib.error: a damaged archive
        raise CheckpointError(f"{npz_path}: damaged checkpoint archive: {e}") from None
    if str(arrays.pop("__id__", "")) != meta.get("id"):
        raise CheckpointError(f"{json_path}: its .npz belongs to another save (a crash while "
                              "overwriting it); load an earlier checkpoint of the run")
    meta["path"] = json_path
    return arrays, meta


def remove_temporaries(run_dir):
    """Delete files a killed save left behind (only call while holding the folder's lock)."""
    for name in os.listdir(run_dir):
        if name.startswith(TMP_PREFIX):
            try:
                os.unlink(os.path.join(run_dir, name))
            except OSError:
                pass


class RunLock:
    """An exclusive lock on a run folder for one training at a time.

    flock is released by the kernel when the process dies, even by SIGKILL, so a crashed
    run never leaves a stale lock behind."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_NAME)
        self._fd = None

    def acquire(self):
        import fcntl
        try:
            os.makedirs(self.run_dir, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CheckpointError(f"cannot use {self.run_dir} as the run folder: {e.strerror or e}; "
                                  "choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise CheckpointError(f"{self.run_dir} is in use by another training (process {holder}); "
                                  "wait for it to finish, stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            os.close(self._fd)       # closing drops the flock; the file itself may stay
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False

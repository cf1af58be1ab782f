"""Checkpoints: `<tag>.npz` (arrays) + `<tag>.json` (everything else). No pickle anywhere.

Both files are written to a temporary name, flushed to disk and renamed, the JSON last:
a checkpoint exists only once its JSON does, so a crash or kill at any moment leaves the
previous checkpoints whole and loadable.
"""
import json
import os
import re
import tempfile
import uuid

import numpy as np

_TAG = re.compile(r"^(\d+)(?:-(\d+))?\.json$")


class CheckpointError(ValueError):
    pass


def _atomic_write(path, write):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def tag_for(epoch, batch=None):
    """'3' after epoch 3; '3-120' when stopped after 120 batches of epoch 4 (3 complete)."""
    return f"{epoch}" if not batch else f"{epoch}-{batch}"


def save(run_dir, tag, arrays, meta):
    os.makedirs(run_dir, exist_ok=True)
    npz_path = os.path.join(run_dir, f"{tag}.npz")
    json_path = os.path.join(run_dir, f"{tag}.json")
    # the same id in both files: a pair torn by a crash while overwriting a tag is detected
    ident = uuid.uuid4().hex
    _atomic_write(npz_path, lambda f: np.savez(f, __id__=np.array(ident), **arrays))
    text = json.dumps(dict(meta, id=ident), indent=1, sort_keys=True).encode()
    _atomic_write(json_path, lambda f: f.write(text))
    return json_path


def list_checkpoints(run_dir):
    """Complete checkpoints in `run_dir`, oldest first, as JSON paths."""
    found = []
    for name in os.listdir(run_dir):
        m = _TAG.match(name)
        if m and os.path.exists(os.path.join(run_dir, name[:-5] + ".npz")):
            found.append(((int(m.group(1)), int(m.group(2) or 0)), os.path.join(run_dir, name)))
    return [p for _, p in sorted(found)]


def _pair_matches(json_path):
    try:
        with open(json_path, encoding="utf-8") as f:
            ident = json.load(f).get("id")
        with np.load(json_path[:-5] + ".npz", allow_pickle=False) as z:
            return "__id__" in z.files and str(z["__id__"]) == ident
    except (OSError, ValueError, KeyError):
        return False


def resolve(path):
    """A run folder (its latest whole checkpoint) or one checkpoint's .json/.npz -> the .json path."""
    if os.path.isdir(path):
        for json_path in reversed(list_checkpoints(path)):
            if _pair_matches(json_path):
                return json_path
        raise CheckpointError(f"{path}: no checkpoint in this folder (expected <epoch>.json + <epoch>.npz)")
    base, ext = os.path.splitext(path)
    if ext in (".json", ".npz") and os.path.exists(base + ".json") and os.path.exists(base + ".npz"):
        return base + ".json"
    raise CheckpointError(f"{path}: not a checkpoint (give a run folder, or a <epoch>.json/.npz pair)")


def load(path):
    """(arrays, meta) of a checkpoint given as a run folder or a checkpoint file."""
    json_path = resolve(path)
    try:
        with open(json_path, encoding="utf-8") as f:
            meta = json.load(f)
        with np.load(json_path[:-5] + ".npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{json_path}: cannot read checkpoint: {e}") from None
    if str(arrays.pop("__id__", "")) != meta.get("id"):
        raise CheckpointError(f"{json_path}: its .npz belongs to another save (a crash while "
                              "overwriting it); load an earlier checkpoint of the run")
    meta["path"] = json_path
    return arrays, meta

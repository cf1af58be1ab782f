"""cuda-convnet batch folders (and the CIFAR-10 "python version", which uses the same files).

A folder holds `batches.meta` and `data_batch_1` .. `data_batch_N`, each a pickled dict;
a batch may be split into sub-batches `data_batch_N.1`, `data_batch_N.2`, ... whose data
is concatenated. In a batch, `data` is either

* [dims, n] uint8, one column per image (cuda-convnet, CIFAR-10 "py-colmajor"), or
* [n, dims] uint8, one row per image (CIFAR-10's python version),

told apart by which axis matches the number of labels. Each image is the R plane, then G,
then B, each row-major, so an image is `vector.reshape(C, S, S)`.

Split: validation is `test_batch` when present (CIFAR-10 python: data_batch_1..5 +
test_batch), otherwise the highest-numbered batch with all its sub-batches (cuda-convnet's
CIFAR convention: batch 6 is the test batch); training is every other data batch.

The files are pickles, and unpickling can run arbitrary code, so they are read with a
restricted unpickler that only builds dicts, lists, strings, numbers and NumPy arrays of
numbers: any other class, any callable, and object arrays (whose items are arbitrary
Python objects) are refused with a DataError naming the file.
"""
import importlib
import os
import pickle
import re

import numpy as np

from ._base import DataError, DataSource, log, part_slice

META = "batches.meta"
_BATCH_RE = re.compile(r"^data_batch_(\d+)(?:\.(\d+))?$")

# (module, name) pairs a batch file may ask for: what NumPy arrays, dtypes and scalars
# need to be rebuilt, plus _codecs.encode and bytes() (protocol-2 pickles of bytes use them).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"), ("__builtin__", "bytes"), ("builtins", "bytes"),
    ("collections", "OrderedDict"),
}


_PLAIN_LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None))
# dtype kinds a batch may hold: numbers and fixed-width strings, never object pointers or
# structured/void records (whose pickled state could claim to hold objects)
_PLAIN_KINDS = "biufcSU"


def _refuse_objects(path, what):
    return DataError(f"refusing to load {path}: it holds {what}, which is not plain data; "
                     "cuda-convnet batch files contain only numeric arrays, lists, dicts, strings and numbers")


def _check_plain(obj, path):
    """DataError unless `obj` is made only of plain containers, strings, numbers and numeric arrays."""
    stack, seen = [obj], set()
    while stack:  # iterative: a pickle may nest deeply or refer to itself
        x = stack.pop()
        if isinstance(x, (dict, list, tuple, set, frozenset)):
            if id(x) not in seen:
                seen.add(id(x))
                stack.extend(x.items() if isinstance(x, dict) else x)
        elif isinstance(x, (np.ndarray, np.generic, np.dtype)):
            dtype = x if isinstance(x, np.dtype) else x.dtype
            if dtype.hasobject:
                raise _refuse_objects(path, "a NumPy object array")
        elif callable(x):  # e.g. numpy.dtype named as a value: data holds no code
            raise _refuse_objects(path, "a reference to a class or function")
        elif type(x) not in _PLAIN_LEAVES:
            raise _refuse_objects(path, f"a {type(x).__module__}.{type(x).__qualname__} object")


class _ArrayToken:
    """Stands for numpy.ndarray, which a pickle names only as _reconstruct's first argument:
    called directly it could build an object array over raw bytes."""

    def __init__(self, path):
        self._path = path

    def __call__(self, *args, **kwargs):
        raise DataError(f"refusing to load {self._path}: it calls numpy.ndarray directly, which NumPy's own "
                        "pickles never do; cuda-convnet batch files contain only arrays, lists and dicts")


class _RestrictedUnpickler(pickle._Unpickler):  # the Python one: its BUILD step can be checked too
    """Builds only what _ALLOWED names, each NumPy call through a wrapper that checks its dtype,
    and lets NumPy restore a dtype's or an array's pickled state only when it is plain."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, f, path):
        super().__init__(f, encoding="latin1")
        self._path = path
        self._array = _ArrayToken(path)

    def _plain(self, dtype):
        dtype = np.dtype(dtype)
        if dtype.hasobject or dtype.kind not in _PLAIN_KINDS:
            what = "a NumPy object array" if dtype.hasobject else f"a NumPy array of dtype {dtype}"
            raise _refuse_objects(self._path, what)
        return dtype

    def _encode(self, text, encoding="utf-8", *rest):
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):  # how pickle stores bytes
            raise _refuse_objects(self._path, f"a call of _codecs.encode({type(text).__name__}, {encoding!r})")
        return text.encode("latin1")

    def _empty_bytes(self, *args):
        if args:
            raise _refuse_objects(self._path, f"a call of bytes() with arguments {args!r:.40}")
        return b""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise DataError(f"refusing to load {self._path}: it asks for {module}.{name}, which could run "
                            "code; cuda-convnet batch files contain only arrays, lists and dicts")
        if name == "ndarray":
            return self._array
        if name == "encode":
            return self._encode
        if name == "bytes":  # protocol 2 writes b"" as bytes(); with an argument it could allocate any size
            return self._empty_bytes
        if name == "dtype":
            return lambda *args: self._plain(np.dtype(*args))
        real = self._import(module, name)
        if name == "_reconstruct":
            def reconstruct(subtype, shape, dtype):
                if subtype is not self._array:
                    raise _refuse_objects(self._path, f"an array of type {type(subtype).__name__}")
                return real(np.ndarray, shape, self._plain(dtype))
            return reconstruct
        if name == "_frombuffer":
            return lambda buf, dtype, shape, order: real(buf, self._plain(dtype), shape, order)
        if name == "scalar":
            return lambda dtype, *args: real(self._plain(dtype), *args)
        return real

    def load_build(self):
        inst, state = self.stack[-2], self.stack[-1]
        if isinstance(inst, np.dtype):
            # a dtype's state may add fields or claim object flags: allow a byte order only
            ok = (isinstance(state, tuple) and len(state) == 8 and state[1] in ("<", ">", "|", "=")
                  and state[2:5] == (None, None, None) and state[7] == inst.flags)
            what = f"a NumPy dtype with the state {state!r:.80}"
        elif isinstance(inst, np.ndarray):
            ok, what = True, None  # its dtype can only have come from dtype() and the check above
        else:
            ok, what = False, f"a {type(inst).__name__} with a pickled state"
        if not ok:
            raise _refuse_objects(self._path, what)
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build

    def _import(self, module, name):
        # NumPy 2 renamed numpy.core to numpy._core (keeping numpy.core as a deprecated alias):
        # try the new name, then the old, so pickles from either NumPy load on either.
        rest = module.split(".", 2)[2] if module.startswith(("numpy.core.", "numpy._core.")) else None
        candidates = [f"numpy._core.{rest}", f"numpy.core.{rest}"] if rest else [module]
        for mod in candidates:
            try:
                return getattr(importlib.import_module(mod), name)
            except (ImportError, AttributeError):
                continue
        raise DataError(f"cannot load {self._path}: it needs {module}.{name}, which this NumPy lacks; "
                        "re-save the batch files with this NumPy version")


def _text(x):
    return x.decode("utf-8", "replace") if isinstance(x, (bytes, bytearray)) else x


def load_pickle(path):
    """Read one cuda-convnet pickle with the restricted unpickler; returns a dict with str keys."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the file exists and is readable") from None
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... from a damaged file
        raise DataError(f"cannot read {path}: not a valid cuda-convnet batch pickle "
                        f"({type(e).__name__}: {e}); re-create or re-download it") from None
    _check_plain(obj, path)
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not a dict; "
                        "cuda-convnet batch files are pickled dicts")
    return {_text(k): v for k, v in obj.items()}


def _is_name_list(names):
    return (isinstance(names, (list, tuple, np.ndarray))
            and all(isinstance(x, (str, bytes, np.str_, np.bytes_)) for x in names))


def _meta_int(meta, keys):
    for k in keys:
        if k in meta and meta[k] is not None:
            try:
                return int(np.asarray(meta[k]).reshape(-1)[0])
            except (TypeError, ValueError, IndexError):
                return None
    return None


class BatchFolderSource(DataSource):
    """A cuda-convnet batch folder; see the module docstring for the format and split.

    The whole folder is held in memory (uint8) when it fits in `memory_limit` bytes (CIFAR-10
    is 180 MB), and a shuffled epoch is a permutation of all training images. Larger folders
    are streamed one batch file at a time: the file order and the order inside each file are
    shuffled (as cuda-convnet does), so memory stays at about one batch file.
    Preprocess default: no scaling, crop, flip or PCA (cuda-convnet's CIFAR nets use none).
    """

    def __init__(self, root, input_shape=None, memory_limit=2 << 30):
        super().__init__()
        self.root = os.path.abspath(os.fspath(root))
        self.name = os.path.basename(self.root.rstrip(os.sep)) or self.root
        self.default_augment = {"scale": 1.0, "crop": False, "flip": False, "pca": 0.0}
        meta_path = os.path.join(self.root, META)
        meta = load_pickle(meta_path)
        names = meta.get("label_names", meta.get("fine_label_names"))
        if names is not None and not _is_name_list(names):
            raise DataError(f"{meta_path}: label_names must be a list of class names (strings), got "
                            f"{type(names).__name__}; fix it or leave it out")
        self.class_names = [str(_text(x)) for x in names] if names is not None else None
        self._meta_path = meta_path

        files = self._find_files()
        self._files = files
        self._channels = _meta_int(meta, ("num_colors", "num_channels", "channels"))
        self._side = _meta_int(meta, ("img_size",))
        num_vis = _meta_int(meta, ("num_vis",))
        self._dims = num_vis
        if self._side is not None and self._channels is None and num_vis:
            self._channels = num_vis // (self._side * self._side) or None

        arrays, counts, max_label, total = {}, {}, (-1, None), 0
        keep = True
        for split in ("train", "val"):
            parts_x, parts_y = [], []
            for path in files[split]:
                x, y = self._read(path)
                if len(y):
                    max_label = max(max_label, (int(y.max()), path))
                total += x.nbytes
                if keep and total > memory_limit:
                    keep = False
                    arrays.clear()
                    parts_x, parts_y = [], []
                    log.info("%s: more than %d bytes of data; streaming batch files from disk",
                             self.root, memory_limit)
                if keep:
                    parts_x.append(x)
                    parts_y.append(y)
                counts[split] = counts.get(split, 0) + len(y)
            if keep:
                arrays[split] = (np.concatenate(parts_x), np.concatenate(parts_y))
        self._arrays = arrays if keep else {}
        self.num_train, self.num_val = counts.get("train", 0), counts.get("val", 0)
        if self.num_train == 0:
            raise DataError(f"{self.root}: the training batches hold no images; "
                            "check the data_batch_* files")
        if self.class_names is not None:
            self.num_classes = len(self.class_names)
            if max_label[0] >= self.num_classes:
                raise DataError(f"{max_label[1]} has label {max_label[0]} but {meta_path} lists only "
                                f"{self.num_classes} label_names (labels 0..{self.num_classes - 1}); "
                                "fix the labels or label_names")
        else:
            self.num_classes = max_label[0] + 1
        c, s = self._channels, self._side
        self.image_shape = (c, s, s)
        self.is_color = c == 3

        mean = meta.get("data_mean")
        if mean is not None:
            try:
                mean = np.asarray(mean, dtype=np.float32)
            except (TypeError, ValueError):
                mean = np.zeros(0, np.float32)  # unusable: computed instead, below
            if mean.size == c * s * s and np.all(np.isfinite(mean)):
                self._mean = np.ascontiguousarray(mean.reshape(self.image_shape))
            else:
                log.warning("%s: data_mean is not %d finite numbers (one per image value); computing the "
                            "mean from the training batches instead", meta_path, c * s * s)

    # -- files ---------------------------------------------------------------------
    def _find_files(self):
        groups = {}
        try:
            entries = os.listdir(self.root)
        except OSError as e:
            raise DataError(f"cannot list {self.root}: {e.strerror or e}") from None
        for fn in entries:
            m = _BATCH_RE.match(fn)
            if m:
                sub = int(m.group(2)) if m.group(2) is not None else 0
                groups.setdefault(int(m.group(1)), []).append((sub, os.path.join(self.root, fn)))
        has_test = os.path.isfile(os.path.join(self.root, "test_batch"))
        majors = sorted(groups)
        if not majors or (len(majors) < 2 and not has_test):
            raise DataError(f"{self.root} has batches.meta but {len(majors)} data_batch_<N> file(s); need at "
                            "least two (training batches plus the highest-numbered one for validation), "
                            "or data_batch_N files plus test_batch")

        def paths(major):
            return [p for _, p in sorted(groups[major])]

        if has_test:
            train_majors, val = majors, [os.path.join(self.root, "test_batch")]
        else:
            train_majors, val = majors[:-1], paths(majors[-1])
        return {"train": [p for m in train_majors for p in paths(m)], "val": val}

    def _read(self, path):
        d = load_pickle(path)
        if "data" not in d:
            raise DataError(f"{path} has no 'data' entry (keys: {sorted(map(str, d))}); "
                            "is it a cuda-convnet batch file?")
        labels = d.get("labels", d.get("fine_labels"))
        if labels is None:
            raise DataError(f"{path} has no 'labels' entry; is it a cuda-convnet batch file?")
        raw = d["data"]
        if isinstance(raw, (list, tuple)) and raw and isinstance(raw[0], (bytes, bytearray)):
            raise DataError(f"{path} stores JPEG strings (a cuda-convnet2 ImageNet batch), which this engine "
                            "does not decode; use an image folder (train/<class>/*.jpg) instead")
        try:
            labels = np.asarray(labels, dtype=np.float64).reshape(-1)
            data = np.asarray(raw)
        except (TypeError, ValueError) as e:
            raise DataError(f"{path}: 'data'/'labels' are not numeric arrays ({e})") from None
        bad = ~np.isfinite(labels) | (labels < 0) | (labels != np.round(labels))
        if np.any(bad):
            i = int(np.argmax(bad))
            raise DataError(f"{path}: label {i} is {labels[i]:g}; labels must be class numbers 0, 1, 2, ... "
                            "(fix the labels in this file)")
        labels = labels.astype(np.int64)
        n = len(labels)
        if data.dtype.kind not in "biuf":
            raise DataError(f"{path}: 'data' has dtype {data.dtype}; expected numbers (uint8 pixels)")
        if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
            raise DataError(f"{path}: 'data' holds NaN or infinite values; re-create this batch file")
        if data.ndim != 2:
            raise DataError(f"{path}: 'data' has shape {data.shape}; expected [dims, n] (cuda-convnet) "
                            f"or [n, dims] (CIFAR python) for {n} labels")
        if data.shape[1] == n and (data.shape[0] != n or data.shape[0] == self._dims):
            images = data.T  # one column per image
        elif data.shape[0] == n:
            images = data
        else:
            raise DataError(f"{path}: 'data' has shape {data.shape[0]}x{data.shape[1]} but there are {n} "
                            "labels; one axis must match the number of labels")
        dims = images.shape[1]
        if self._channels is None or self._side is None:
            self._channels, self._side = self._guess_layout(dims, path)
        c, s = self._channels, self._side
        if dims != c * s * s:
            raise DataError(f"{path}: images have {dims} values but {META} says {c}x{s}x{s} = {c * s * s}; "
                            "all batches must hold images of the same size")
        dtype = np.uint8 if images.dtype == np.uint8 else np.float32
        return np.ascontiguousarray(images, dtype=dtype).reshape(n, c, s, s), labels

    def _guess_layout(self, dims, path):
        chans = [self._channels] if self._channels else [3, 1]
        for c in chans:
            if dims % c == 0:
                s = int(round((dims // c) ** 0.5))
                if s * s * c == dims:
                    return c, s
        raise DataError(f"{path}: images have {dims} values, which is not channels x side x side for "
                        f"channels {' or '.join(map(str, chans))}; add num_colors and img_size to {META}")

    # -- iteration -----------------------------------------------------------------
    def _load(self, split, idx):
        x, y = self._arrays[split]
        return x[idx], y[idx]

    def batches(self, split, batch_size, rng=None, drop_last=False, part=None):
        n = self._check_split(split, batch_size)
        if split in self._arrays:
            return super().batches(split, batch_size, rng, drop_last, part)
        stream = self._stream(split, batch_size, rng, drop_last, n)
        if part is None:
            return stream
        # streamed (larger than memory): the order crosses files, so each rank reads them all
        return ((x[slice(*part_slice(len(y), *part))], y[slice(*part_slice(len(y), *part))]) for x, y in stream)

    def _stream(self, split, batch_size, rng, drop_last, n):
        files = list(self._files[split])
        if rng is not None:
            files = [files[i] for i in rng.permutation(len(files))]
        bx, by = [], []
        held = 0
        for path in files:
            x, y = self._read(path)
            if rng is not None:
                p = rng.permutation(len(y))
                x, y = x[p], y[p]
            bx.append(x)
            by.append(y)
            held += len(y)
            if held < batch_size:
                continue
            x, y = np.concatenate(bx), np.concatenate(by)
            full = len(y) - len(y) % batch_size
            for i in range(0, full, batch_size):
                yield x[i:i + batch_size], y[i:i + batch_size]
            bx, by, held = [x[full:]], [y[full:]], len(y) - full
        if held and not drop_last:
            yield np.concatenate(bx), np.concatenate(by)


"""Reading one image file with Pillow, for the image folders and for `predict`.

Any mode Pillow opens becomes RGB (or L for one-channel nets): grey is replicated, the
alpha of RGBA/LA/transparent palette images is dropped, CMYK is converted, and 16-bit grey
is scaled to 8 bits (Pillow's own convert clips it at 255, turning most images white).
Every failure is a one-line DataError that names the file.
"""
import numpy as np

from ._base import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png")


def _pillow(path):
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"{path}: decoding images needs Pillow, which is not installed; "
                        "run: pip install pillow") from None
    return Image


def _to_mode(im, mode, Image):
    if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit grey: PNG's 16 bits -> 8 bits
        a = np.asarray(im, dtype=np.float32)
        if im.mode != "F":
            a = a / 257.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    elif im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # Pillow warns when a transparent palette goes straight to RGB
    return im.convert(mode)


def _reason(e):
    from PIL import UnidentifiedImageError
    if isinstance(e, UnidentifiedImageError):
        return "not a JPEG or PNG image, or damaged beyond recognition"
    return " ".join(f"{type(e).__name__}: {e}".split())  # one line


def open_image(path, mode, draft=None):
    """`path` decoded and converted to `mode` ("RGB" or "L") as a loaded Pillow image.

    `draft` = (w, h) lets JPEG decode at a reduced scale no smaller than that. Raises
    DataError naming the file when it is missing, truncated, corrupt or not an image.
    """
    Image = _pillow(path)
    try:
        with Image.open(path) as im:
            if draft is not None:
                im.draft(mode, draft)
            im.load()
            return _to_mode(im, mode, Image)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise DataError(f"cannot open image {path}: {e.strerror}; check the path") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise DataError(f"cannot read image {path}: {_reason(e)}; replace or remove the file") from None


def read_image(path, channels):
    """One image file as uint8 [H, W] (channels == 1) or [H, W, 3] (otherwise)."""
    return np.asarray(open_image(path, "L" if channels == 1 else "RGB"), dtype=np.uint8)

"""Maps a YAML `type` to its Layer class."""

REGISTRY = {}


def register(cls):
    """Class decorator: make a Layer subclass available under `cls.type`."""
    if not cls.type:
        raise ValueError(f"{cls.__name__} has no `type`")
    if cls.type in REGISTRY and REGISTRY[cls.type] is not cls:
        raise ValueError(f"layer type {cls.type!r} registered twice")
    REGISTRY[cls.type] = cls
    return cls


def get(type_name):
    return REGISTRY[type_name]

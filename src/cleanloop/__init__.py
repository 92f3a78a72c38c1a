"""cleanloop: make labelled text data trustworthy and label new data with the least human effort.

The steps of the cleaning round are importable from here (:mod:`cleanloop.api`, loaded on first use)::

    import cleanloop

    cfg = cleanloop.Config(dataset="my_data.csv", workdir="runs/mine")
    flags = cleanloop.flag(cfg)
"""

__version__ = "0.1.0"

from cleanloop.config import Config, load_config  # noqa: E402
from cleanloop.errors import CleanloopError  # noqa: E402

# the calls of cleanloop.api, one per step (``cleanloop.flag(cfg)``)
_API = ("load", "describe", "train", "tune", "score", "flag", "push", "pull", "apply", "export", "predict", "serve",
        "active", "retrain_loop")

__all__ = ["Config", "load_config", "CleanloopError", "__version__", *_API]


def __getattr__(name: str):
    # lazily, so that `import cleanloop` (and the CLI's start) does not pay for the API's imports
    if name in _API:
        from cleanloop import api

        return getattr(api, name)
    raise AttributeError(f"module 'cleanloop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))

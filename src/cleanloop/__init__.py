"""cleanloop: make labelled text data trustworthy and label new data with the least human effort."""

__version__ = "0.1.0"

from cleanloop.config import Config, load_config  # noqa: E402
from cleanloop.errors import CleanloopError  # noqa: E402

__all__ = ["Config", "load_config", "CleanloopError", "__version__"]

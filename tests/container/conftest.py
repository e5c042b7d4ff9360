"""Container tests need a running engine and the built image: `make test-image` runs them with
B2S_IMAGE set to the image it built. Without B2S_IMAGE (plain `make test`, `pytest tests`) this
folder is not collected at all, so `make test` never needs Docker."""

from __future__ import annotations

import os

if not os.environ.get("B2S_IMAGE"):
    collect_ignore_glob = ["test_*.py"]

# The pipeline copy and the native run every engine's run is compared with, once per session.
from .runs import base_dir, native_run, pipeline  # noqa: E402,F401

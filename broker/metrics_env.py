"""Set up prometheus_client's multiprocess storage. Import nothing from prometheus_client here:
it reads ``PROMETHEUS_MULTIPROC_DIR`` once, when first imported."""

from __future__ import annotations

import os
import shutil
import tempfile


def prepare() -> str:
    """An empty multiprocess directory, exported to this process and the workers it starts."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder, exist_ok=True)
    else:
        folder = tempfile.mkdtemp(prefix="mcpb-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    return folder

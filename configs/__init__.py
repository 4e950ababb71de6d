"""Experiment configs (`get_config()` per file) and the shared defaults they start from.

The defaults and helpers live in the package (`dualenc/training/config.py`, so an installed
wheel has them); this module re-exports them for the config files here, plus `repo_path` for
paths inside the checkout.
"""

from __future__ import annotations

from pathlib import Path

from ml_collections import config_dict

from dualenc.training.config import FSDP_RULES, MINILM_HUB_ID, base_config, finalize, minilm_path


def repo_path(*parts: str) -> str:
    """A path inside the repository (configs may be loaded from any working directory)."""
    return str(Path(__file__).resolve().parent.parent.joinpath(*parts))


__all__ = [
    "FSDP_RULES",
    "MINILM_HUB_ID",
    "base_config",
    "config_dict",
    "finalize",
    "minilm_path",
    "repo_path",
]

"""Default evaluation config (defined in dualenc/retrieval/eval_config.py: wheels have it).

Usage: python -m dualenc.evaluate --config configs/eval/default.py --config.model=M ...
"""

from dualenc.retrieval.eval_config import get_config

__all__ = ["get_config"]

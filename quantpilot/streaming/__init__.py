"""Language models at real size: block-by-block quantization streamed from a local checkpoint.

Example:
    >>> from quantpilot.streaming import quantize_checkpoint
    >>> callable(quantize_checkpoint)
    True
"""

from .checkpoint import Checkpoint, find_block_list
from .pipeline import quantize_checkpoint, rss_bytes

__all__ = ["quantize_checkpoint", "Checkpoint", "find_block_list", "rss_bytes"]

"""Models with bundled weights, and the ImageNet samples to evaluate them on.

``load(name)`` returns ``(model, prep)`` in eval mode; ``available()`` lists the names.

Example:
    >>> from quantpilot import models
    >>> models.available()
    ['efficientnet-lite0', 'minilm']
"""

from .registry import available, load

__all__ = ["available", "load"]

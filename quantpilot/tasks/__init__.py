"""Old home of the language-model testbed, outlier injection and sentence helpers: aliases of `quantpilot_testbed`.

Example:
    >>> import quantpilot.tasks.language_model as lm
    >>> lm.__name__
    'quantpilot_testbed.language_model'
"""

from .._moved import alias_modules

alias_modules(
    __name__,
    {
        "language_model": "quantpilot_testbed.language_model",
        "outlier_injection": "quantpilot_testbed.outlier_injection",
        "sentence_embedding": "quantpilot_testbed.sentence_embedding",
    },
)

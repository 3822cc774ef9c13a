"""Old path of `quantpilot_testbed.datasets`, moved to the repository's testbed: importing it gives that module."""

from ._moved import alias_self

alias_self(__name__, "quantpilot_testbed.datasets")

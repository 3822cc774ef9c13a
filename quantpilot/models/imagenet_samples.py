"""Old path of `quantpilot_testbed.imagenet_samples` (moved to the repository's testbed): importing it gives that."""

from .._moved import alias_self

alias_self(__name__, "quantpilot_testbed.imagenet_samples")

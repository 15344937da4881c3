"""The former name of :mod:`llamadiff.policy`, kept so existing imports keep working."""

from llamadiff.policy import *  # noqa: F401,F403
from llamadiff.policy import STRATEGIES, make_policy  # noqa: F401

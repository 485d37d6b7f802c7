"""The family's methods, one file each: importing this package registers them all (``methods.base.METHODS``).

Self Forcing, Deep Forcing (the default), Infinite-Forcing, LongLive, Causal Forcing, Rolling Forcing and Matrix-Game 2.0; a method defined elsewhere
(a test, a plug-in) registers itself the same way by subclassing ``methods.base.Method``.
"""
from . import base  # noqa: F401
from . import (deep_forcing, self_forcing, longlive, infinite_forcing, causal_forcing, rolling_forcing,  # noqa: F401
               matrix_game2)
from .base import (DEFAULT_METHOD, METHODS, CheckpointFile, Method, MethodContext, MethodRun,  # noqa: F401
                   detect_method, get_method, method_names, mode_variants)

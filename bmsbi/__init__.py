"""bmsbi: simulation-based, amortized inference for brainmass neural-mass models.

Three verbs: simulate a bank (:func:`simulate_bank`), train an estimator
(:class:`NPE`, :class:`NLE`, :class:`NRE`), sample its posterior for any recording.
"""

__version__ = "0.1.0"

from .prior import Prior
from .bank import Bank, simulate_bank
from . import summaries

__all__ = ["Prior", "Bank", "simulate_bank", "summaries", "__version__"]

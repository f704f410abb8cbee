"""Estimators: each supplies a loss and a model to :func:`bmsbi.engine.fit` and returns a
:class:`bmsbi.Posterior`."""

from .mcmc_posterior import MCMCPosterior
from .nle import NLE
from .npe import NPE
from .nre import NRE

__all__ = ["NPE", "NLE", "NRE", "MCMCPosterior"]

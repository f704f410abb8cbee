"""bmsbi: simulation-based, amortized inference for brainmass neural-mass models.

Three verbs: simulate a bank (:func:`simulate_bank`), train an estimator
(:class:`NPE`, :class:`NLE`, :class:`NRE`), sample its posterior for any recording;
or spend the simulations on one observation (:class:`SequentialNPE`).
"""

from ._version import __version__

import sys as _sys

from .prior import Prior
from .recording import Recording, RecordingSpec, RecordingWarning, read_recording
from .trials import Trials
from .bank import Bank, simulate_bank, simulate_at
from . import engine, summaries, embeddings, diagnostics, plotting, ood
from .posterior import Posterior, DirectPosterior, Inference, OutOfDistributionWarning, load_posterior
from .estimators import NPE, NLE, NRE, MCMCPosterior
from .sequential import SequentialNPE
from .trainer import Trainer, TrainingHistory, EarlyStopping, ModelCheckpoint
from .cache import enable_compilation_cache

# discovery (benchmark systems), tasks (the evidence-integration task) and datasets (real
# fMRI, from the extra bmsbi[empirical]) register themselves in brainmass.datasets when
# imported, which imports brainmass (brainstate, braintools, matplotlib, scipy.stats: about
# a second). They are imported on first use (bmsbi.discovery, from bmsbi import tasks), and
# right away when brainmass is already imported, so that `import brainmass, bmsbi` still
# registers them before brainmass.datasets.load_dataset is called.
_REGISTERING = ("discovery", "tasks", "datasets")


def __getattr__(name):
    if name in _REGISTERING:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_REGISTERING))


if "brainmass" in _sys.modules:
    from . import discovery, tasks, datasets

__all__ = ["Prior", "Recording", "RecordingSpec", "RecordingWarning", "read_recording", "Trials", "Bank", "simulate_bank", "simulate_at", "NPE", "NLE", "NRE", "SequentialNPE", "Posterior", "DirectPosterior",
           "MCMCPosterior", "Inference", "OutOfDistributionWarning", "load_posterior", "Trainer", "TrainingHistory", "EarlyStopping", "ModelCheckpoint", "tasks", "discovery",
           "datasets", "engine", "summaries", "embeddings", "diagnostics", "plotting", "ood",
           "enable_compilation_cache", "__version__"]

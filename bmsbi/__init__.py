"""bmsbi: simulation-based, amortized inference for brainmass neural-mass models.

Three verbs: simulate a bank (:func:`simulate_bank`), train an estimator
(:class:`NPE`, :class:`NLE`, :class:`NRE`), sample its posterior for any recording;
or spend the simulations on one observation (:class:`SequentialNPE`).
"""

from ._version import __version__

import sys as _sys
import typing as _typing

from .prior import Prior
from .recording import Recording, RecordingSpec, RecordingWarning, read_recording
from .trials import Trials
from .bank import Bank, simulate_bank, simulate_at
from . import engine, summaries, embeddings, diagnostics, plotting, ood, robust
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
# Names read from their module on first use (``bmsbi.ModelComparison``), not at ``import bmsbi``.
_LAZY = {"ModelComparison": "comparison", "load_model_comparison": "comparison", "comparison": None}
if _typing.TYPE_CHECKING:  # seen by type checkers and the documentation build, not at run time
    from . import comparison
    from .comparison import ModelComparison, load_model_comparison


def __getattr__(name):
    if name in _REGISTERING or name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY.get(name) or name}")
        return module if _LAZY.get(name) is None else getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_REGISTERING) | set(_LAZY))


if "brainmass" in _sys.modules:
    from . import discovery, tasks, datasets

__all__ = ["Prior", "Recording", "RecordingSpec", "RecordingWarning", "read_recording", "Trials", "Bank", "simulate_bank", "simulate_at", "NPE", "NLE", "NRE", "SequentialNPE", "Posterior", "DirectPosterior",
           "MCMCPosterior", "ModelComparison", "load_model_comparison", "comparison", "Inference", "OutOfDistributionWarning", "load_posterior", "Trainer", "TrainingHistory", "EarlyStopping", "ModelCheckpoint", "tasks", "discovery",
           "datasets", "engine", "summaries", "embeddings", "diagnostics", "plotting", "ood", "robust",
           "enable_compilation_cache", "__version__"]

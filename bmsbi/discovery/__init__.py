"""Sparse model discovery for neural-mass dynamics, on the shared training engine.

Learn *which* terms drive the dynamics — ``dx/dt = library(x) @ Ξ`` with most of ``Ξ``
zero — from trajectories, and how sure the data make each term:

>>> from bmsbi import discovery
>>> data = discovery.benchmark_system("stuart_landau", 0.01)      # known equations
>>> found = discovery.fit(data.trajectories, data.dt, library=data.library, key=0)
>>> discovery.support_f1(found.coefficients, data.coefficients)
1.0
>>> found.inclusion_probability.shape
(10, 2)

Pieces: candidate libraries (:func:`polynomial_library`, :func:`sigmoid_library`,
:func:`tanh_library`, :func:`coupling_library`, concatenated with ``+``); :func:`fit`
(``method="derivative"`` or ``"trajectory"``) returning :class:`Discovered`; the model as
a brainstate module (:class:`SparseDynamics`, runs in ``brainmass.Simulator``); benchmark
systems registered with ``brainmass.datasets`` (:func:`benchmark_system`); metrics
(:func:`support_f1`, :func:`coefficient_error`).
"""

from .library import (Library, PolynomialLibrary, FunctionLibrary, CouplingLibrary, ConcatLibrary,
                      polynomial_library, sigmoid_library, tanh_library, coupling_library, concat,
                      library_from_dict, library_from_json)
from .model import SparseDynamics
from .smoothing import smooth_derivative
from .fit import fit, Discovered, mse, support_f1, coefficient_error, format_equations
from .datasets import (DiscoveryBenchmark, benchmark_system, register_datasets, dataset_name,
                       SYSTEMS, NOISE_LEVELS)

register_datasets()

__all__ = ["Library", "PolynomialLibrary", "FunctionLibrary", "CouplingLibrary", "ConcatLibrary",
           "polynomial_library", "sigmoid_library", "tanh_library", "coupling_library", "concat",
           "library_from_dict", "library_from_json", "SparseDynamics", "smooth_derivative", "fit",
           "Discovered", "mse", "support_f1", "coefficient_error", "format_equations",
           "DiscoveryBenchmark", "benchmark_system", "register_datasets", "dataset_name",
           "SYSTEMS", "NOISE_LEVELS"]

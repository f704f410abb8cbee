"""The version of bmsbi (``bmsbi.__version__``), in a module of its own so that the layers
below the package (file headers in :mod:`bmsbi.io`, ArviZ provenance) can read it
without importing the package."""

# The release; pyproject.toml gives the same version to the package metadata.
__version__ = "0.1.0"

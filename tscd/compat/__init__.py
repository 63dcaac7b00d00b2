"""Drop-ins for the shared pieces of the AFA family (AFA, ToCo, DuPL, SeCo, CoSA, MoRe, TSCD).

- :mod:`tscd.compat.bilateralfilter` replaces the SWIG-compiled ``bilateralfilter`` module;
  install it with ``sys.modules["bilateralfilter"] = tscd.compat.bilateralfilter`` before the
  family's loss module is imported.
- :class:`DenseEnergyLoss` replaces the family's ``DenseEnergyLoss`` module.
- :class:`PAR` and :class:`VARM` replace the family's refiners.

Every pairwise sum is exact (no permutohedral lattice) and scaled by the lattice's measured
factor :data:`LATTICE_SCALE`, so the family's tuned loss weights keep their meaning.
"""
from tscd.losses.dense_energy import LATTICE_SCALE

from . import bilateralfilter
from .modules import PAR, VARM, DenseEnergyLoss

__all__ = ["LATTICE_SCALE", "DenseEnergyLoss", "PAR", "VARM", "bilateralfilter"]

"""Drop-ins for the shared pieces of the AFA family (AFA, ToCo, DuPL, SeCo, CoSA, MoRe, TSCD).

- :mod:`tscd.compat.bilateralfilter` replaces the SWIG-compiled ``bilateralfilter`` module;
  install it with ``sys.modules["bilateralfilter"] = tscd.compat.bilateralfilter`` before the
  family's loss module is imported.
- :class:`DenseEnergyLoss` replaces the family's ``DenseEnergyLoss`` module: its values and,
  by default, its gradient (``gradient="true"`` for the loss's own).
- :class:`PAR` and :class:`VARM` replace the family's refiners.

Both pairwise sums default to tscd's permutohedral lattice on the CPU, which gives the
family's values (≈ :data:`LATTICE_SCALE` × the exact sum); the exact sum, scaled by
:data:`LATTICE_SCALE` so the family's tuned loss weights keep their meaning, is one switch
away (``bilateralfilter.use_exact_sum(True)``, ``DenseEnergyLoss(..., exact_sum=True)``) and
is what CUDA tensors get.
"""
from tscd.ops import LATTICE_SCALE

from . import bilateralfilter
from .modules import PAR, VARM, DenseEnergyLoss

__all__ = ["LATTICE_SCALE", "DenseEnergyLoss", "PAR", "VARM", "bilateralfilter"]

"""The exact dense energy loss (method §8), fwd, bwd and full, and its lattice approximation:
``DenseEnergyLoss`` in :mod:`tscd.selftest.cases`."""


def test_dense_energy_loss(case, check_and_time):
    check_and_time(case)

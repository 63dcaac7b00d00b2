"""tscd.compat's drop-ins for the AFA family: ``bilateralfilter_batch`` and ``DenseEnergyLoss``, on the
lattice and with the exact sum: ``CompatFilter`` and ``CompatDenseEnergy`` in :mod:`tscd.selftest.cases`."""


def test_compat_filter(case, check_and_time):
    check_and_time(case)


def test_compat_dense_energy(case, check_and_time):
    check_and_time(case)

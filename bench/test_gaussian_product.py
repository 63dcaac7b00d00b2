"""The bare Gaussian-kernel product W·S, exact and on the permutohedral lattice: ``GaussianProduct``
in :mod:`tscd.selftest.cases`."""


def test_gaussian_product(case, check_and_time):
    check_and_time(case)

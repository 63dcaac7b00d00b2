"""Dense CRF inference (method §10): the exact backends, tscd's lattice and pydensecrf2: ``DenseCrf``
in :mod:`tscd.selftest.cases`."""


def test_dense_crf(case, check_and_time):
    check_and_time(case)

"""VARM and PAR refinement (method §4): ``VarmRefine`` in :mod:`tscd.selftest.cases`."""


def test_varm_refine(case, check_and_time):
    check_and_time(case)

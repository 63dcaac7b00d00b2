"""Whole-evaluation throughput (``tscd eval``) under each protocol: ``Eval`` in :mod:`tscd.selftest.cases`."""


def test_eval(case, check_and_time):
    check_and_time(case)

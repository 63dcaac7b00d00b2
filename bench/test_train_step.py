"""One TSCD training step, every op on one backend against the torch reference: ``TrainStep`` in
:mod:`tscd.selftest.cases`."""


def test_train_step(case, check_and_time):
    check_and_time(case)

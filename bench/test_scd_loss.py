"""The self-correspondence distillation loss (method §6), fwd, bwd and full: ``ScdLoss`` in
:mod:`tscd.selftest.cases`."""


def test_scd_loss(case, check_and_time):
    check_and_time(case)

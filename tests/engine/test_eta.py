"""The run's ETA: L_cls-only and full steps counted apart, evaluations included, the assumed
cost of a full step replaced by the measured one."""
import pytest

from tscd.engine.eta import FULL_STEP_COST, MEASURED_STEPS, RunClock, format_duration


def test_before_any_step_there_is_no_estimate():
    assert RunClock(0, 100, 100, 60, 50).remaining(0) is None


def test_estimate_from_cls_steps_assumes_the_full_step_cost_and_says_so():
    clock = RunClock(0, 100, 100, 60, 40)  # evaluations at 40, 80 and 100
    for step in range(1, MEASURED_STEPS + 1):
        clock.step_done(step, 0.2)
    assert clock.report_due(MEASURED_STEPS)
    clock.step_done(MEASURED_STEPS + 1, 0.2)
    assert not clock.report_due(MEASURED_STEPS + 1)
    seconds, how = clock.remaining(MEASURED_STEPS + 1)
    assert seconds == pytest.approx((60 - MEASURED_STEPS - 1) * 0.2 + 40 * 0.2 * FULL_STEP_COST)
    assert "assumed" in how and "3 evaluations" in how


def test_measured_full_steps_and_evaluations_replace_the_assumption():
    clock = RunClock(0, 100, 100, 60, 40)
    for step in range(1, 61):
        clock.step_done(step, 0.2)
    clock.eval_done(4.0)  # at 40
    for step in range(61, 61 + MEASURED_STEPS):
        clock.step_done(step, 0.7)
    last = 60 + MEASURED_STEPS
    assert clock.report_due(last)
    seconds, how = clock.remaining(last)
    assert seconds == pytest.approx((100 - last) * 0.7 + 4.0)  # the one at 80 has run: 100 is left
    assert "assumed" not in how and "1 evaluation of 4 s" in how


def test_a_resumed_run_in_its_full_stage_and_a_final_evaluation_off_the_interval():
    clock = RunClock(70, 95, 95, 60, 40)  # evaluations at 80 and at the end (95)
    clock.step_done(71, 1.0)
    seconds, _ = clock.remaining(71)
    assert seconds == pytest.approx(24 * 1.0)  # no evaluation time measured yet
    assert clock._evaluations_after(71) == 2


@pytest.mark.parametrize("seconds, text", [(38.4, "38 s"), (245, "4 min 05 s"), (3720, "1 h 02 min")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text

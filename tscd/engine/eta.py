"""How long a training run has left, from the step and evaluation times measured in the run.

A run has two kinds of step (method §9): L_cls-only steps up to ``loss.stage1_iters``, then
steps with every term, which also run the no-grad CAM passes, the refinement and the pairwise
losses. Until a full step has been timed its cost is taken as :data:`FULL_STEP_COST` L_cls-only
steps, and the estimate says so.
"""
from __future__ import annotations

#: A step with every term costs about this many L_cls-only steps: the demo's ratio (docs/demo.md,
#: "Where the time goes"); the run's own replaces it once measured.
FULL_STEP_COST = 2.1
#: Steps of a kind that are timed before an estimate is reported from them.
MEASURED_STEPS = 20


def format_duration(seconds: float) -> str:
    """``"4 min 05 s"``, ``"38 s"``, ``"1 h 02 min"``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class RunClock:
    """Times the steps and evaluations of a run and estimates the rest.

    Args:
        step: the iteration the run starts from (0, or the resumed one); end: the last iteration;
        max_iters, stage1_iters, eval_interval: the schedule (an evaluation every
        ``eval_interval`` iterations and at ``max_iters``).
    """

    def __init__(self, step: int, end: int, max_iters: int, stage1_iters: int, eval_interval: int):
        self.start, self.end, self.max_iters = step, end, max_iters
        self.stage1_iters, self.eval_interval = stage1_iters, eval_interval
        self.step_seconds = {True: [], False: []}  # L_cls-only step? -> durations
        self.eval_seconds: list[float] = []

    def is_stage1(self, step: int) -> bool:
        return step <= self.stage1_iters

    def step_done(self, step: int, seconds: float) -> None:
        """Iteration ``step`` (1-based) took ``seconds``, evaluation excluded."""
        self.step_seconds[self.is_stage1(step)].append(seconds)

    def eval_done(self, seconds: float) -> None:
        self.eval_seconds.append(seconds)

    def report_due(self, step: int) -> bool:
        """Whether an estimate is worth reporting after ``step``: once the first steps of each
        kind have been timed (the second report replaces the assumed cost of a full step)."""
        return any(len(self.step_seconds[kind]) == MEASURED_STEPS and self.is_stage1(step) == kind
                   for kind in (True, False))

    def _evaluations_after(self, step: int) -> int:
        count = self.end // self.eval_interval - step // self.eval_interval
        return count + (self.end == self.max_iters and self.max_iters % self.eval_interval != 0)

    def remaining(self, step: int) -> tuple[float, str] | None:
        """(seconds left after iteration ``step``, how they were estimated), or None before any
        step has been timed. Evaluations count at their measured time (0 until one has run)."""
        def median(values):
            return sorted(values)[len(values) // 2] if values else None

        cls_step, full_step = median(self.step_seconds[True]), median(self.step_seconds[False])
        assumed = full_step is None
        if assumed:
            if cls_step is None:
                return None
            full_step = FULL_STEP_COST * cls_step
        if cls_step is None:
            cls_step = full_step / FULL_STEP_COST
        cls_left = max(0, min(self.end, self.stage1_iters) - step)
        full_left = max(0, self.end - max(step, self.stage1_iters))
        evals = self._evaluations_after(step)
        eval_time = median(self.eval_seconds) or 0.0
        seconds = cls_left * cls_step + full_left * full_step + evals * eval_time
        parts = []
        if cls_left:
            parts.append(f"{cls_left} L_cls-only steps of {cls_step:.2f} s")
        if full_left:
            parts.append(f"{full_left} full steps of {full_step:.2f} s"
                         + (f" (assumed {FULL_STEP_COST:g}× until measured)" if assumed else ""))
        if evals:
            measured = f" of {eval_time:.0f} s" if self.eval_seconds else ""
            parts.append(f"{evals} evaluation{'s' * (evals > 1)}{measured}")
        return seconds, ", ".join(parts)

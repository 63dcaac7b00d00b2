"""Where an evaluation's time goes: wall-clock seconds per stage, summed over the images."""
from __future__ import annotations

import contextlib
import time

import torch

#: The stages of ``tscd eval``: reading and moving the batches (and writing predictions), the
#: protocol's forward passes, the multi-scale CAM, the refinement of the pseudo labels, the
#: attention random walk, the dense CRF, the confusion matrices and samples.
STAGES = ("io", "forward", "cam", "refine", "walk", "crf", "metrics")


class StageTimer:
    """Wall-clock seconds per named stage, summed over the calls of :meth:`stage`, and the count
    of ``images`` they were spent on (the caller adds to it).

    On CUDA each stage ends with ``torch.cuda.synchronize``, so that the kernels a stage launched
    count in it, not in the stage that waits for them next.

    Args:
        device: where the timed work runs.
    """

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.images = 0

    @contextlib.contextmanager
    def stage(self, name: str):
        """Inside, the time counts for ``name`` (an error's too)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def summary(self, total: float) -> str:
        """One line: the seconds per image of each stage that took time and its share of
        ``total``, the seconds of the whole evaluation; what no stage holds is ``other``."""
        per_image = 1 / max(self.images, 1)
        parts = dict(self.seconds, other=max(total - sum(self.seconds.values()), 0.0))
        shown = ", ".join(f"{name} {seconds * per_image:.3g} s ({100 * seconds / max(total, 1e-9):.0f} %)"
                          for name, seconds in parts.items() if seconds > 0)
        return f"{total * per_image:.3g} s/image over {self.images} images: {shown}"

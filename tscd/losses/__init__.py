"""Training losses of the TSCD recipe (spec §5–§9), as nn.Modules built on tscd.ops."""
from .affinity import AffinityLoss, affinity_targets  # noqa: F401

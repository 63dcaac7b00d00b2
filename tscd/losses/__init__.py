"""Training losses of the TSCD recipe (method §5–§9), as nn.Modules built on tscd.ops."""
from .affinity import AffinityLoss, affinity_targets  # noqa: F401
from .dense_energy import DenseEnergyLoss  # noqa: F401
from .equivariance import EquivarianceLoss, equivariance_loss  # noqa: F401
from .scd import SelfCorrespondenceDistillation  # noqa: F401
from .segmentation import SegmentationLoss, segmentation_loss  # noqa: F401

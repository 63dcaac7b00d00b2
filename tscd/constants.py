"""Constants shared by every layer: the ignore label and the ImageNet normalisation."""

#: Label of pixels that no loss or metric counts (VOC boundaries, uncertain pseudo labels, padding).
IGNORE_INDEX = 255

#: Per-channel RGB mean and standard deviation of ImageNet, in [0, 1] units (the MiT weights' normalisation).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: How pseudo labels are refined (method §4): TSCD's VARM, AFA's PAR, or not at all.
REFINE_MODES = ("varm", "par", "none")

#: The dense CRF of an evaluation (method §10): a ``tscd.ops.dense_crf`` backend request, or none.
CRF_CHOICES = ("auto", "exact", "pydensecrf", "none")

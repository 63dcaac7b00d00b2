"""COCO 2014 with per-pixel class masks converted from the instance annotations (method §11).

Layout under ``root`` (what ``tscd data coco DIR`` writes, :mod:`tscd.data.prepare.coco`)::

    JPEGImages/<name>.jpg                 e.g. COCO_train2014_000000000009.jpg (train and val together)
    SegmentationClass/<name>.png          class indices 0..80 (0 = background, 255 = ignore)
    ImageSets/Segmentation/<split>.txt    names per split (train, val); or <split>.txt in root

The masks are the WSSS lineage's conversion (AFA and ToCo point to alicranck/coco2voc): each
instance's category becomes its rank 1..80 among the 80 categories (:data:`COCO_CATEGORIES`),
the instances of an image are painted from the smallest area to the largest and a pixel keeps
the first (smallest) instance that covers it, and crowd regions are painted with their category
like any other instance.
"""
from __future__ import annotations

from .voc import VOCStyleDataset

#: (COCO category id, name) of the 80 categories, in id order: class k (1..80) is the k-th.
COCO_CATEGORIES = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
)
#: The 81 class names, background first (the names of the COCO 2014 annotation files).
COCO_CLASSES = ("background",) + tuple(name for _, name in COCO_CATEGORIES)


class COCODataset(VOCStyleDataset):
    num_classes = 81
    class_names = COCO_CLASSES
    classes_from = "COCO"
    dataset_name, mask_dir, default_split = "coco", "SegmentationClass", "train"

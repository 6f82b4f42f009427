"""AVS-Synth dataset names, registered when ``selm_d2.data.datasets`` is imported.

AVS-Synth (``python -m selm_d2.data.synthetic``) writes the official AVSBench layouts, so
it is registered with the AVSBench parsers themselves. Root ``$DETECTRON2_DATASETS/avs_synth``
(default ``datasets/avs_synth``; the variable is read when a dataset is loaded), which holds
``Single-source/``, ``Multi-sources/`` and ``AVSS/``:

- ``avs_synth_s4_{train,val,test}``: S4 layout, binary masks, train annotates frame 1 only;
- ``avs_synth_ms3_{train,val,test}``: MS3 layout, binary masks;
- ``avs_synth_avss_{train,val,test}``: AVSS layout (v1s, v1m, v2 subsets), classes
  ``["background"] + SYNTH_CATEGORIES`` coloured with the AVSS palette.

AVS-Synth with AVSBench-semantic's 70 categories, root ``$DETECTRON2_DATASETS/avs_synth70``
(``python -m selm_d2.data.synthetic --out datasets/avs_synth70 --layouts avss
--num-categories 70``):

- ``avs_synth70_avss_{train,val,test}``: AVSS layout, classes
  ``["background"] + CODED_CATEGORIES`` (71, like AVSBench-semantic).
"""
import os

from ..synthetic import CODED_CATEGORIES, LAYOUT_DIRS, MAX_CATEGORIES, SPLITS, SYNTH_CATEGORIES
from .builtin import under_datasets_root
from .register import register_avs_dataset

__all__ = ["AVS_SYNTH_CLASSES", "AVS_SYNTH70_CLASSES", "register_all_avs_synth",
           "register_all_avs_synth70"]

AVS_SYNTH_CLASSES = ["background"] + SYNTH_CATEGORIES
AVS_SYNTH70_CLASSES = ["background"] + CODED_CATEGORIES[:MAX_CATEGORIES]


def register_all_avs_synth70(root=None):
    """Register the 70-category AVSS names with data under `root` (no file is read); None =
    ``$DETECTRON2_DATASETS/avs_synth70`` at load time."""
    avss_root = (under_datasets_root("avs_synth70", LAYOUT_DIRS["avss"]) if root is None
                 else os.path.join(root, LAYOUT_DIRS["avss"]))
    for split in SPLITS:
        register_avs_dataset("avs_synth70_avss_" + split, avss_root, "avss", split=split,
                             metadata={"stuff_classes": list(AVS_SYNTH70_CLASSES)})


def register_all_avs_synth(root=None):
    """Register every AVS-Synth name with data under `root` (no file is read); None =
    ``$DETECTRON2_DATASETS/avs_synth`` at load time."""
    if root is None:
        root, avss_root = under_datasets_root("avs_synth"), under_datasets_root(
            "avs_synth", LAYOUT_DIRS["avss"])
    else:
        avss_root = os.path.join(root, LAYOUT_DIRS["avss"])
    for split in SPLITS:
        register_avs_dataset("avs_synth_s4_" + split, root, "avsbench_s4", split=split,
                             metadata={"categories": list(SYNTH_CATEGORIES)})
        register_avs_dataset("avs_synth_ms3_" + split, root, "avsbench_ms3", split=split)
        # The class list is given so that importing reads no file.
        register_avs_dataset("avs_synth_avss_" + split, avss_root, "avss", split=split,
                             metadata={"stuff_classes": list(AVS_SYNTH_CLASSES)})


register_all_avs_synth()
register_all_avs_synth70()

"""AVS-Synth dataset names, registered when ``selm_d2.data.datasets`` is imported.

AVS-Synth (``python -m selm_d2.data.synthetic``) writes the official AVSBench layouts, so
it is registered with the AVSBench parsers themselves. Root ``$DETECTRON2_DATASETS/avs_synth``
(default ``datasets/avs_synth``; the variable is read when a dataset is loaded), which holds
``Single-source/``, ``Multi-sources/`` and ``AVSS/``:

- ``avs_synth_s4_{train,val,test}``: S4 layout, binary masks, train annotates frame 1 only;
- ``avs_synth_ms3_{train,val,test}``: MS3 layout, binary masks;
- ``avs_synth_avss_{train,val,test}``: AVSS layout (v1s, v1m, v2 subsets), classes
  ``["background"] + SYNTH_CATEGORIES`` coloured with the AVSS palette.
"""
import os

from ..synthetic import LAYOUT_DIRS, SPLITS, SYNTH_CATEGORIES
from .builtin import under_datasets_root
from .register import register_avs_dataset

__all__ = ["AVS_SYNTH_CLASSES", "register_all_avs_synth"]

AVS_SYNTH_CLASSES = ["background"] + SYNTH_CATEGORIES


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

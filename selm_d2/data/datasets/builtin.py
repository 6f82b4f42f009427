"""Builtin AVSBench dataset names, registered when ``selm_d2.data.datasets`` is imported.

Roots under ``$DETECTRON2_DATASETS`` (default ``datasets/``; see datasets/README.md):

- ``avsbench_object/`` (holds ``Single-source/`` and ``Multi-sources/``):
  ``avsbench_s4_{train,val,test}``, ``avsbench_ms3_{train,val,test}``;
- ``avsbench_semantic/`` (holds ``metadata.csv``, ``label2idx.json``, ``v1s/ v1m/ v2/``):
  ``avss_{train,val,test}`` (all subsets) and ``avss_{v1s,v1m,v2}_{train,val,test}``.
"""
import os

from .avss import AVSS_CLASSES, SUBSET_FRAMES
from .register import register_avs_dataset

__all__ = ["SPLITS", "register_all_avsbench"]

SPLITS = ("train", "val", "test")


def register_all_avsbench(root):
    """Register every builtin AVSBench name with data under `root` (no file is read)."""
    object_root = os.path.join(root, "avsbench_object")
    for split in SPLITS:
        register_avs_dataset("avsbench_s4_" + split, object_root, "avsbench_s4", split=split)
        register_avs_dataset("avsbench_ms3_" + split, object_root, "avsbench_ms3", split=split)
    semantic_root = os.path.join(root, "avsbench_semantic")
    for subset in (None,) + tuple(SUBSET_FRAMES):
        prefix = "avss_" if subset is None else "avss_{}_".format(subset)
        for split in SPLITS:
            # The class list is given so that importing reads no file.
            register_avs_dataset(prefix + split, semantic_root, "avss", split=split,
                                 subset=subset, metadata={"stuff_classes": list(AVSS_CLASSES)})


register_all_avsbench(os.getenv("DETECTRON2_DATASETS", "datasets"))

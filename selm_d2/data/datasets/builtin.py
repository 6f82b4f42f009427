"""Builtin AVSBench dataset names, registered when ``selm_d2.data.datasets`` is imported.

Roots under ``$DETECTRON2_DATASETS`` (default ``datasets/``; see datasets/README.md), read
each time a dataset is loaded, so setting the variable after ``import selm_d2`` works:

- ``avsbench_object/`` (holds ``Single-source/`` and ``Multi-sources/``):
  ``avsbench_s4_{train,val,test}``, ``avsbench_ms3_{train,val,test}``;
- ``avsbench_semantic/`` (holds ``metadata.csv``, ``label2idx.json``, ``v1s/ v1m/ v2/``):
  ``avss_{train,val,test}`` (all subsets) and ``avss_{v1s,v1m,v2}_{train,val,test}``.
"""
import os

from .avss import AVSS_CLASSES, SUBSET_FRAMES
from .common import SPLITS
from .register import register_avs_dataset

__all__ = ["SPLITS", "datasets_root", "register_all_avsbench", "under_datasets_root"]


def datasets_root():
    """``$DETECTRON2_DATASETS`` as it is now (default ``datasets``)."""
    return os.getenv("DETECTRON2_DATASETS", "datasets")


def under_datasets_root(*parts):
    """A root resolved each time the dataset is loaded: ``$DETECTRON2_DATASETS/<parts>``."""
    return lambda: os.path.join(datasets_root(), *parts)


def register_all_avsbench(root=None):
    """Register every builtin AVSBench name (no file is read). `root`: the folder holding
    ``avsbench_object/`` and ``avsbench_semantic/``; None = ``$DETECTRON2_DATASETS`` at load
    time."""
    def under(folder):
        return under_datasets_root(folder) if root is None else os.path.join(root, folder)

    for split in SPLITS:
        register_avs_dataset("avsbench_s4_" + split, under("avsbench_object"), "avsbench_s4",
                             split=split)
        register_avs_dataset("avsbench_ms3_" + split, under("avsbench_object"), "avsbench_ms3",
                             split=split)
    for subset in (None,) + tuple(SUBSET_FRAMES):
        prefix = "avss_" if subset is None else "avss_{}_".format(subset)
        for split in SPLITS:
            # The class list is given so that registration reads no file.
            register_avs_dataset(prefix + split, under("avsbench_semantic"), "avss", split=split,
                                 subset=subset, metadata={"stuff_classes": list(AVSS_CLASSES)})


register_all_avsbench()

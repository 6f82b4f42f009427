"""Checks of a config against the datasets it names, run before any data is loaded."""
from detectron2.data import MetadataCatalog
from ..utils import ConfigError

__all__ = ["check_num_classes"]


def check_num_classes(cfg, dataset_names):
    """Raise ValueError when MODEL.SELM.NUM_CLASSES (K) does not fit a dataset's classes.

    The model predicts K+1 channels (background first); a dataset's Metadata
    ``stuff_classes`` lists background and its K classes (binary S4/MS3: 2 entries).
    Datasets without ``stuff_classes`` are not checked.
    """
    k = cfg.MODEL.SELM.NUM_CLASSES
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("stuff_classes", None)
        if classes is not None and len(classes) != k + 1:
            raise ConfigError(
                "MODEL.SELM.NUM_CLASSES is {} (the model predicts background + {} classes) but "
                "dataset '{}' has {} classes in its stuff_classes (background + {}): set "
                "MODEL.SELM.NUM_CLASSES {}, or use a config made for this dataset (e.g. "
                "configs/avss/ for AVSBench-semantic).".format(
                    k, k, name, len(classes), len(classes) - 1, len(classes) - 1)
            )

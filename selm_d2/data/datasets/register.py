"""``register_avs_dataset``: register AVS clips of any supported layout with detectron2.

Registration reads no clip data (at most an AVSS ``label2idx.json``): the loader runs when
``DatasetCatalog.get(name)`` is called, so a dataset whose files are absent still registers,
and loading it raises an error that names the expected path. A root may be a function that
returns the path (builtin names: ``$DETECTRON2_DATASETS/...``), called at every load.
"""
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..masks import IGNORE_LABEL, avss_palette
from .avsbench import S4_CATEGORIES, MS3Layout, S4Layout
from .avss import AVSS_CLASSES, AVSSLayout, read_label2idx
from .common import image_size
from .manifest import ManifestLayout
from ...utils import ConfigError

__all__ = [
    "BINARY_CLASSES",
    "BINARY_COLORS",
    "LAYOUTS",
    "build_layout",
    "load_avs_clips",
    "register_avs_dataset",
]

logger = logging.getLogger(__name__)

LAYOUTS = {
    "avsbench_s4": S4Layout,
    "avsbench_ms3": MS3Layout,
    "avss": AVSSLayout,
    "manifest": ManifestLayout,
}

BINARY_CLASSES = ["background", "sounding object"]
BINARY_COLORS = [[0, 0, 0], [220, 20, 60]]


def build_layout(root, layout, split=None, subset=None):
    """The parser of `layout` ("avsbench_s4" | "avsbench_ms3" | "avss" | "manifest")."""
    if layout not in LAYOUTS:
        raise ConfigError("Unknown AVS dataset layout {!r}; expected one of {}.".format(
            layout, sorted(LAYOUTS)))
    return LAYOUTS[layout](root, split=split, subset=subset)


def load_avs_clips(layout):
    """Dataset dicts (one per clip) of a layout parser, with the frame size read from the
    first frame's header (no pixel decoding). A frame that cannot be read stops the loading
    with an error naming the clip and the file."""
    dicts = []
    for record in layout.records():
        clip = layout.clip_dict(record)
        try:
            clip["height"], clip["width"] = image_size(clip["file_names"][0])
        except (OSError, ValueError) as e:
            raise type(e)("Clip {!r} of {}: {}".format(
                clip["clip_id"], layout.metadata_file, e)) from e
        dicts.append(clip)
    logger.info("Loaded %d AVS clips (%s layout) from %s", len(dicts), layout.name,
                layout.metadata_file)
    return dicts


def _default_metadata(layout, user):
    """Metadata implied by the layout: binary AVS for S4/MS3/manifest, 71 classes for AVSS.

    AVSS class names come from ``<root>/label2idx.json`` when it exists at registration and
    the user gave none.
    """
    if isinstance(layout, AVSSLayout):
        label_file = os.path.join(layout.root, "label2idx.json")
        classes = AVSS_CLASSES
        if "stuff_classes" not in user and os.path.isfile(label_file):
            classes = read_label2idx(label_file)
        return {"evaluator_type": "avss", "stuff_classes": list(classes),
                "num_frames": layout.num_frames}
    meta = {"evaluator_type": "avs_binary", "stuff_classes": list(BINARY_CLASSES)}
    if isinstance(layout, S4Layout):
        meta["categories"] = list(S4_CATEGORIES)
    if isinstance(layout, ManifestLayout):
        # Semantic labels are recognised by their class list: background + several classes.
        if len(user.get("stuff_classes", BINARY_CLASSES)) > 2:
            meta["evaluator_type"] = "avss"
    else:
        meta["num_frames"] = layout.num_frames
    return meta


def register_avs_dataset(name, root, layout, split=None, subset=None, metadata=None, **kwargs):
    """Register clips as a detectron2 dataset `name` (DatasetCatalog + MetadataCatalog).

    Args:
        name: dataset name, e.g. "my_avs_train".
        root: "avsbench_s4"/"avsbench_ms3": the folder holding ``Single-source/`` or
            ``Multi-sources/`` (or that folder itself); "avss": the folder holding
            ``metadata.csv``; "manifest": the manifest .json/.csv file. Or a function
            without arguments returning it, called each time the dataset is loaded.
        layout: "avsbench_s4" | "avsbench_ms3" | "avss" | "manifest".
        split: keep clips of this split only ("train", "val", "test"); None = all.
        subset: "avss" only: "v1s" | "v1m" | "v2"; None = all.
        metadata: dict of Metadata fields overriding the defaults implied by the layout:
            binary S4/MS3/manifest data get evaluator_type "avs_binary" and
            stuff_classes ["background", "sounding object"]; AVSS gets "avss" and the 71
            classes (from ``<root>/label2idx.json`` when present). A manifest of semantic
            labels passes its class names (background first) as "stuff_classes": with more
            than two classes the evaluator type defaults to "avss".
        **kwargs: more Metadata fields (same as entries of `metadata`).

    Every dataset's Metadata holds evaluator_type, stuff_classes, stuff_colors,
    ignore_label (255) and layout; dataset_root when `root` is a path; num_frames (frames
    per clip) for the AVSBench layouts, and for manifests when given.
    """
    def parser_now():
        return build_layout(root() if callable(root) else root, layout, split=split,
                            subset=subset)

    parser = parser_now()
    user = dict(metadata or {}, **kwargs)
    meta = _default_metadata(parser, user)
    meta.update(user)
    if "stuff_colors" not in user:
        classes = meta["stuff_classes"]
        meta["stuff_colors"] = (BINARY_COLORS if len(classes) == 2
                                else avss_palette(len(classes)).tolist())
    meta.setdefault("ignore_label", IGNORE_LABEL)

    DatasetCatalog.register(name, lambda: load_avs_clips(parser_now()))
    if not callable(root):
        meta["dataset_root"] = root
    MetadataCatalog.get(name).set(layout=layout, **meta)

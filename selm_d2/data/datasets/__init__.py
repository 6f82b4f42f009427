"""AVS dataset registration. Importing this package registers the builtin AVSBench names
(see ``builtin.py``); ``register_avs_dataset`` registers users' own data."""
from . import builtin as _builtin  # noqa: F401  (registration only)
from . import register_avs_synth as _synth  # noqa: F401  (registration only)
from .avsbench import S4_CATEGORIES, MS3Layout, S4Layout
from .avss import AVSS_CLASSES, AVSSLayout, read_label2idx
from .manifest import ManifestLayout
from .register import LAYOUTS, build_layout, load_avs_clips, register_avs_dataset
from .spec import parse_dataset_spec, register_dataset_specs

__all__ = [
    "AVSS_CLASSES",
    "AVSSLayout",
    "LAYOUTS",
    "MS3Layout",
    "ManifestLayout",
    "S4Layout",
    "S4_CATEGORIES",
    "build_layout",
    "load_avs_clips",
    "parse_dataset_spec",
    "read_label2idx",
    "register_avs_dataset",
    "register_dataset_specs",
]

"""AVS data: dataset registration (at import), the clip mapper, audio front-end, AVS-Synth."""
from . import datasets  # noqa: F401  (registers the builtin dataset names)
from .checks import check_num_classes
from .dataset_mapper import AVSClipDatasetMapper
from .datasets import register_avs_dataset

__all__ = ["AVSClipDatasetMapper", "check_num_classes", "register_avs_dataset"]

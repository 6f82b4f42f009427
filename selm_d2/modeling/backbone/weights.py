"""Reading pretrained encoder weights from local files and loading them with clear errors.

The readers accept the layouts the official releases use: PyTorch ``.pth`` state dicts
(torchvision ResNet, torchvggish, timm and original PVT-v2, optionally wrapped in a
``{"model": ...}`` or ``{"state_dict": ...}`` checkpoint) and detectron2 ``.pkl`` files
(detectron2 model-zoo format, or Caffe2/Detectron ImageNet blobs such as MSRA ``R-50.pkl``).
Renaming a layout to a module's own names is the job of each encoder.
"""
import logging
import os
import pickle
from typing import Dict

import numpy as np
import torch
from detectron2.checkpoint.c2_model_loading import convert_basic_c2_names
from ...utils import ConfigError, DataError, MissingFileError

logger = logging.getLogger(__name__)

__all__ = ["read_weights_file", "load_checked_state_dict", "load_visual_weights"]

# Checkpoints written by training scripts nest the state dict under one of these keys.
_CONTAINER_KEYS = ("model", "state_dict")


def _read_detectron2_pkl(path):
    with open(path, "rb") as f:
        data = pickle.load(f, encoding="latin1")
    if not isinstance(data, dict):
        raise DataError("{} holds a {}, not a dict of weights.".format(path, type(data).__name__))
    if "model" in data and "__author__" in data:
        # detectron2 model-zoo format: names are detectron2's already.
        return data["model"]
    # Caffe2 / Detectron ImageNet weights (e.g. MSRA R-50.pkl): C2 blob names.
    blobs = data.get("blobs", data)
    blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
    names = sorted(blobs)
    return {new: blobs[old] for old, new in zip(names, convert_basic_c2_names(names))}


def _read_torch_file(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Training checkpoints may also pickle Python objects (argparse namespaces, ...).
        # The path comes from the user's own config, so full unpickling is their call.
        logger.warning(
            "{} holds Python objects besides tensors; loading it with full unpickling. "
            "Only use weight files you trust.".format(path)
        )
        return torch.load(path, map_location="cpu", weights_only=False)


def read_weights_file(path: str, config_key: str) -> Dict[str, torch.Tensor]:
    """
    Read a pretrained weight file into a flat ``{name: tensor}`` dict, in the file's own
    naming.

    Args:
        path: a ``.pth``/``.pt``/``.bin`` PyTorch file or a detectron2 ``.pkl`` file.
            Caffe2 blob names of ``.pkl`` files are renamed to detectron2's.
        config_key: the config key the path came from, named in error messages.

    Returns:
        dict[str, Tensor]: CPU tensors.
    """
    if not os.path.isfile(path):
        raise MissingFileError(
            "Pretrained weight file {} (config key {}) does not exist. It only initialises "
            "training; either put the file there, or convert it once with "
            "`python tools/convert_pretrained.py` and start from MODEL.WEIGHTS <converted .pth> "
            "(then {} is not read), or set {} to \"\" to train this encoder from "
            "scratch.".format(path, config_key, config_key, config_key)
        )
    try:
        data = _read_detectron2_pkl(path) if path.endswith(".pkl") else _read_torch_file(path)
    except Exception as e:
        raise DataError(
            "Cannot read pretrained weights {} (config key {}): {}: {}. Expected a PyTorch "
            "state dict (.pth) or a detectron2 .pkl file.".format(
                path, config_key, type(e).__name__, e
            )
        ) from e
    for key in _CONTAINER_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict):
        raise DataError(
            "{} (config key {}) holds a {}, not a state dict of named tensors.".format(
                path, config_key, type(data).__name__
            )
        )
    state_dict = {}
    for name, value in data.items():
        if isinstance(value, np.ndarray):
            value = torch.as_tensor(value)
        if isinstance(value, torch.Tensor):
            state_dict[name] = value
    if not state_dict:
        raise DataError("{} (config key {}) contains no tensors.".format(path, config_key))
    return state_dict


def _preview(names, limit=8):
    names = sorted(names)
    more = " ... ({} more)".format(len(names) - limit) if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_checked_state_dict(
    module: torch.nn.Module,
    state_dict: Dict[str, torch.Tensor],
    *,
    path: str,
    config_key: str,
    shape_hint: str,
    require_all: bool = False,
):
    """
    Load ``state_dict`` (already renamed to ``module``'s names) into ``module``.

    Tensors whose names the module lacks are logged and skipped; module tensors absent
    from the file keep their initialisation and are logged (or, with ``require_all``,
    raise). Raises when a shape differs (naming the key and ``shape_hint``) or when no
    name matches at all (the file is for another network).
    """
    own = module.state_dict()
    matched, unused, mismatched = {}, [], []
    for name, value in state_dict.items():
        if name not in own:
            unused.append(name)
        elif own[name].shape != value.shape:
            mismatched.append(
                "{}: {} in the file, {} in the model".format(
                    name, tuple(value.shape), tuple(own[name].shape)
                )
            )
        else:
            matched[name] = value
    if mismatched:
        raise DataError(
            "Pretrained weights {} (config key {}) do not fit the {} built from the config: "
            "{}. {}".format(
                path, config_key, type(module).__name__, "; ".join(mismatched[:5]), shape_hint
            )
        )
    if not matched:
        raise DataError(
            "No tensor in {} (config key {}) matches {}: the file has keys like [{}], the model "
            "expects keys like [{}]. Is it the weight file for this network?".format(
                path, config_key, type(module).__name__, _preview(state_dict, 4), _preview(own, 4)
            )
        )
    incompatible = module.load_state_dict(matched, strict=False)
    missing = incompatible.missing_keys
    if missing and require_all:
        raise DataError(
            "Pretrained weights {} (config key {}) lack {} of the {} tensors of {}: {}.".format(
                path, config_key, len(missing), len(own), type(module).__name__, _preview(missing)
            )
        )
    logger.info(
        "Loaded {} tensors into {} from {}.".format(len(matched), type(module).__name__, path)
    )
    if missing:
        logger.warning(
            "{} tensors of {} are not in {} and keep their initialisation: {}".format(
                len(missing), type(module).__name__, path, _preview(missing)
            )
        )
    if unused:
        logger.info("{} tensors of {} are not used: {}".format(len(unused), path, _preview(unused)))


def load_visual_weights(backbone: torch.nn.Module, path: str):
    """
    Load ImageNet weights (``MODEL.SELM.VISUAL_WEIGHTS``) into a staged visual encoder.

    Args:
        backbone: a ``StagedResNet`` or ``StagedPVTv2`` (anything with ``load_pretrained``).
        path: the weight file; ``""`` loads nothing (training from scratch).
    """
    if not path:
        return
    if not hasattr(backbone, "load_pretrained"):
        raise ConfigError(
            "MODEL.SELM.VISUAL_WEIGHTS is set but the backbone {} cannot load pretrained "
            "files; use StagedResNet or StagedPVTv2, or leave MODEL.SELM.VISUAL_WEIGHTS "
            "empty.".format(type(backbone).__name__)
        )
    backbone.load_pretrained(path)

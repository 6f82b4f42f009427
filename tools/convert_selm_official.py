#!/usr/bin/env python
"""Convert one of the SelM authors' released checkpoints into a SelM-D2 checkpoint.

    python tools/convert_selm_official.py --config-file configs/ms3/selm_pvt_v2_b5.yaml \\
        --vggish pretrained_backbones/vggish-10086976.pth \\
        pretrained_model/MS3_pvt.pth output/selm_ms3_pvt_v2_b5.pth
    python train_net.py --config-file configs/ms3/selm_pvt_v2_b5.yaml --eval-only \\
        MODEL.WEIGHTS output/selm_ms3_pvt_v2_b5.pth

The authors' file is their model's plain state dict (DDP's ``module.`` prefix is accepted);
their VGGish runs outside the model, so its file (torchvggish's ``vggish-10086976.pth``) is
converted into the same output. The output loads with ``MODEL.WEIGHTS`` with no missing or
unexpected key; the tool checks that before writing.
"""
import argparse
import os

import torch

from detectron2.modeling import build_model

from selm_d2 import load_config
from selm_d2.official import OFFICIAL_CONFIGS, convert_official, identify_official
from selm_d2.utils import ConfigError, DataError, MissingFileError, atomic_path, exit_on_user_error


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE",
                        help="the SelM-D2 config of the checkpoint's task and backbone")
    parser.add_argument("--vggish", required=True, metavar="FILE",
                        help="the VGGish weights the authors use (vggish-10086976.pth)")
    parser.add_argument("checkpoint", help="the authors' .pth file")
    parser.add_argument("output", help="the SelM-D2 .pth file to write")
    parser.add_argument("--verbose", action="store_true", help="show the traceback of errors too")
    return parser


def _read_state_dict(path, what):
    if not os.path.isfile(path):
        raise MissingFileError("{} {} does not exist".format(what, path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reader error means "not a checkpoint"
        raise DataError("{} {} is not a PyTorch checkpoint ({}: {})".format(
            what, path, type(e).__name__, e)) from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if not isinstance(data, dict) or not all(torch.is_tensor(v) for v in data.values()):
        raise DataError("{} {} holds no state dict of tensors".format(what, path))
    return data


def convert(config_file, checkpoint, vggish, output):
    """Write ``output``; returns the number of tensors written."""
    state_dict = _read_state_dict(checkpoint, "checkpoint")
    try:
        task, backbone = identify_official(state_dict)
    except DataError as e:
        raise DataError("{}: {}".format(checkpoint, e)) from None
    weights = convert_official(state_dict, _read_state_dict(vggish, "VGGish file"))
    model = build_model(load_config(config_file, ["MODEL.DEVICE", "cpu"]))
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError:  # tensors of other shapes
        missing = unexpected = True
    if missing or unexpected:
        raise ConfigError("{} is the authors' {} {} model, which {} does not build: use "
                          "--config-file {}".format(checkpoint, task.upper(), backbone,
                                                    config_file, OFFICIAL_CONFIGS[(task, backbone)]))
    with atomic_path(output) as tmp:
        torch.save({"model": weights, "__author__": "selm_d2 tools/convert_selm_official.py",
                    "source": {"checkpoint": checkpoint, "vggish": vggish,
                               "task": task, "backbone": backbone}}, tmp)
    return len(weights)


def main(argv=None):
    args = get_parser().parse_args(argv)
    with exit_on_user_error(args.verbose):
        count = convert(args.config_file, args.checkpoint, args.vggish, args.output)
    print("wrote {} tensors to {}; evaluate with: python train_net.py --config-file {} "
          "--eval-only MODEL.WEIGHTS {}".format(count, args.output, args.config_file, args.output))


if __name__ == "__main__":
    main()

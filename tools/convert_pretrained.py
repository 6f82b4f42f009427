#!/usr/bin/env python
"""Turn the pretrained encoder releases into one initial SelM checkpoint for MODEL.WEIGHTS.

    python tools/convert_pretrained.py --config-file configs/ms3/selm_R50.yaml \\
        --output pretrained_backbones/selm_R50_init.pth
    python train_net.py --config-file configs/ms3/selm_R50.yaml MODEL.WEIGHTS pretrained_backbones/selm_R50_init.pth

The visual file is the config's ``MODEL.SELM.VISUAL_WEIGHTS`` (torchvision ResNet, detectron2
or C2 ``.pkl``, original or timm PVT-v2) unless ``--visual`` names another, and the audio
file ``MODEL.SELM.AUDIO.WEIGHTS`` (the torchvggish port ``vggish-10086976.pth``) unless
``--audio`` does. The output holds the encoders under SelM's own parameter names
(``backbone.*``, ``audio_encoder.*``), so detectron2's checkpointer loads it unchanged; the
other modules keep their initialisation, as with any detectron2 backbone checkpoint.
"""
import argparse

import torch

from detectron2.modeling import build_model

from selm_d2 import load_config
from selm_d2.modeling.pretrained import encoder_state_dict, load_pretrained_encoders
from selm_d2.utils import atomic_path


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE",
                        help="the SelM config the checkpoint is for (backbone and VGGish widths)")
    parser.add_argument("--visual", help="ImageNet weights (default: MODEL.SELM.VISUAL_WEIGHTS)")
    parser.add_argument("--audio", help="VGGish weights (default: MODEL.SELM.AUDIO.WEIGHTS)")
    parser.add_argument("--output", required=True, help="the .pth file to write")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="KEY VALUE config overrides")
    return parser


def convert(config_file, output, visual=None, audio=None, opts=()):
    """Write ``output``; returns the number of tensors written."""
    cfg = load_config(config_file, opts)
    if visual is not None:
        cfg.MODEL.SELM.VISUAL_WEIGHTS = visual
    if audio is not None:
        cfg.MODEL.SELM.AUDIO.WEIGHTS = audio
    cfg.MODEL.DEVICE = "cpu"
    if not cfg.MODEL.SELM.VISUAL_WEIGHTS and not cfg.MODEL.SELM.AUDIO.WEIGHTS:
        raise SystemExit("Nothing to convert: give --visual and/or --audio, or a config whose "
                         "MODEL.SELM.VISUAL_WEIGHTS / AUDIO.WEIGHTS name the files.")
    model = build_model(cfg)
    load_pretrained_encoders(model, cfg)
    weights = encoder_state_dict(model)
    with atomic_path(output) as tmp:
        torch.save({"model": weights, "__author__": "selm_d2 tools/convert_pretrained.py",
                    "sources": {"visual": cfg.MODEL.SELM.VISUAL_WEIGHTS,
                                "audio": cfg.MODEL.SELM.AUDIO.WEIGHTS}}, tmp)
    return len(weights)


def main(argv=None):
    args = get_parser().parse_args(argv)
    count = convert(args.config_file, args.output, args.visual, args.audio, args.opts)
    print("wrote {} encoder tensors to {}; train with MODEL.WEIGHTS {}".format(
        count, args.output, args.output))


if __name__ == "__main__":
    main()

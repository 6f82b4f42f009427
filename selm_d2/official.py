"""The authors' released SelM checkpoints, renamed to SelM-D2's parameters.

The authors save the state dict of their ``SelM_R50`` / ``SelM_PVT`` (a checkpoint saved from
a DDP-wrapped model carries a ``module.`` prefix, which is accepted) and run torchvggish's
VGGish from its own file, outside the model.
``convert_official`` turns both into one SelM-D2 state dict; ``identify_official`` tells which
of the six released models a checkpoint is, from its tensor shapes, so that a checkpoint
meets the config it was trained for.
"""
import re

import torch
from .utils import DataError

__all__ = ["OFFICIAL_CONFIGS", "identify_official", "convert_official", "strip_ddp_prefix"]

# (task, backbone) -> the SelM-D2 config of that released model.
OFFICIAL_CONFIGS = {
    ("s4", "R50"): "configs/s4/selm_R50.yaml",
    ("s4", "PVT"): "configs/s4/selm_pvt_v2_b5.yaml",
    ("ms3", "R50"): "configs/ms3/selm_R50.yaml",
    ("ms3", "PVT"): "configs/ms3/selm_pvt_v2_b5.yaml",
    ("avss", "R50"): "configs/avss/selm_R50.yaml",
    ("avss", "PVT"): "configs/avss/selm_pvt_v2_b5.yaml",
}

# (first positional-embedding side, projector upsamplings, binary) -> task, per backbone.
_TASKS = {
    "R50": {(14, 2, True): "s4", (28, 1, True): "ms3", (14, 2, False): "avss"},
    "PVT": {(28, 1, True): "s4", (28, 2, True): "ms3", (14, 2, False): "avss"},
}

# Parameters of the authors' model that no output depends on: ResNet's second branch and the
# unused LayerNorm + MLP inside each decoder layer's audio cross-attention.
_UNUSED = re.compile(r"^resnet\.layer[34]_2\.|^decoder\.layers\.\d+\.loadtoken\.(norm|mlp)\.")

_DAM = [
    ("fusion.audio_visual_att.audio_value_conv.0.", "audio_value."),
    ("fusion.audio_visual_att.vis_value_conv.0.", "vis_value.0."),
    ("fusion.audio_visual_att.vis_out.0.", "vis_out.0."),
    ("fusion.audio_visual_att.audio_out.0.", "audio_out."),
    ("fusion.audio_visual_att.align_vis.key_conv.0.", "audio_key."),
    ("fusion.audio_visual_att.align_vis.query_conv.0.", "vis_query.0."),
    ("fusion.audio_visual_att.align_vis.query_conv2.0.", "vis_query2.0."),
    ("fusion.audio_visual_att.align_audio.f_key.0.", "vis_key.0."),
    ("fusion.audio_visual_att.align_audio.f_query.0.", "audio_query.0."),
    ("fusion.audio_visual_att.align_audio.f_query2.0.", "audio_query.1."),
    ("fusion.audio_visual_att.vis_weight", "vis_weight"),
    ("fusion.audio_visual_att.audio_weight", "audio_weight"),
    ("fusion.vis_project.", "vis_project."),
    ("fusion.out_conv.", "out_conv."),
]

_DECODER = [
    (r"^layers\.(\d+)\.positional_embedding$", r"pos_embeds.\1"),
    (r"^layers\.(\d+)\.loadtoken\.cross_attn\.", r"audio_loads.\1."),
    (r"^layers\.(\d+)\.loadtoken\.normq\.", r"audio_loads.\1.norm_query."),
    (r"^layers\.(\d+)\.loadtoken\.normk\.", r"audio_loads.\1.norm_audio."),
    (r"^layers\.(\d+)\.norm\.", r"audio_loads.\1.norm."),
    (r"^layers\.(\d+)\.mlp\.", r"audio_loads.\1.mlp."),
    (r"^cgattention(\d)\.", lambda m: "groupings.{}.".format(int(m.group(1)) - 1)),
    (r"^proj\.", "projector."),
]


def strip_ddp_prefix(state_dict):
    """Remove DistributedDataParallel's ``module.`` prefix where every key has it."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def identify_official(state_dict):
    """-> (task, backbone) of an authors' checkpoint: "s4" | "ms3" | "avss", "R50" | "PVT".

    Raises ValueError when the tensors are not those of one of the authors' six models.
    """
    state_dict = strip_ddp_prefix(state_dict)
    if any(k.startswith("resnet.") for k in state_dict):
        backbone = "R50"
    elif any(k.startswith("encoder_backbone.") for k in state_dict):
        backbone = "PVT"
    else:
        raise DataError("not an authors' SelM checkpoint: it has neither 'resnet.*' (SelM_R50) "
                        "nor 'encoder_backbone.*' (SelM_PVT) tensors")
    try:
        pos = state_dict["decoder.layers.0.positional_embedding"]
        linear = state_dict["decoder.proj.audio_linear.weight"]
    except KeyError as e:
        raise DataError("not an authors' SelM checkpoint: {} is missing".format(e)) from None
    side = int(round(pos.shape[0] ** 0.5))
    upsamples = sum(1 for k in state_dict
                    if re.match(r"^decoder\.proj\.vis\.\d+\.0\.weight$", k))
    binary = linear.shape[0] == linear.shape[1] + 1
    task = _TASKS[backbone].get((side, upsamples, binary))
    if task is None:
        raise DataError("an authors' SelM_{} checkpoint of no released task: decoder maps "
                        "{}x{}, {} projector upsamplings, {} outputs".format(
                            backbone, side, side, upsamples, linear.shape[0]))
    return task, backbone


def _rename(name):
    """An authors' parameter name -> SelM-D2's, or None for unused parameters."""
    if _UNUSED.match(name):
        return None
    m = re.match(r"^(?:encoder_backbone\.)?DAM_Fusion(\d)\.(.*)$", name)
    if m:
        rest = m.group(2)
        for old, new in _DAM:
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        return "dam.res{}.{}".format(int(m.group(1)) + 1, rest)
    m = re.match(r"^in_proj(\d)\.(.*)$", name)
    if m:
        return "sem_seg_head.in_proj.{}.{}".format(int(m.group(1)) - 1, m.group(2))
    m = re.match(r"^(?:BCSM|tem_att)\.(.*)$", name)
    if m:
        rest = re.sub(r"_encoder\.(\d+)\.layers\.(\d+)\.", r"_encoder.\1.\2.", m.group(1))
        rest = rest.replace(".layernorm.", ".norm.").replace(".mamba_block.", ".mixer.")
        return "sem_seg_head.bcsm." + rest
    m = re.match(r"^decoder\.(.*)$", name)
    if m:
        rest = m.group(1)
        for old, new in _DECODER:
            rest = re.sub(old, new, rest)
        rest = rest.replace(".mlp.fc1.", ".mlp.0.").replace(".mlp.fc2.", ".mlp.3.")
        return "sem_seg_head.clever." + rest
    if name.startswith("audio_proj."):
        return "audio_proj.0." + name[len("audio_proj."):]
    if name.startswith("audio_norm."):
        return "audio_proj.1." + name[len("audio_norm."):]
    return name


def _backbone_names(state_dict, backbone):
    """The visual encoder's tensors under SelM-D2's ``backbone.*`` names."""
    from .modeling.backbone import convert_pvt_v2_names, convert_resnet_names

    if backbone == "R50":
        prefix = "resnet."
        weights = {re.sub(r"^layer([34])_1\.", r"layer\1.", k[len(prefix):]): v
                   for k, v in state_dict.items() if k.startswith(prefix) and not _UNUSED.match(k)}
        weights = convert_resnet_names(weights)
    else:
        prefix = "encoder_backbone."
        weights = convert_pvt_v2_names({k[len(prefix):]: v for k, v in state_dict.items()
                                        if k.startswith(prefix) and "DAM_Fusion" not in k})
    return {"backbone." + k: v for k, v in weights.items()}


def convert_official(state_dict, vggish_state_dict):
    """One SelM-D2 state dict from an authors' checkpoint and the VGGish weights they use.

    Args:
        state_dict: the authors' ``model.state_dict()`` (``module.`` prefix allowed).
        vggish_state_dict: torchvggish's ``features.*`` / ``embeddings.*`` tensors
            (``vggish-10086976.pth``); PCA parameters, if present, are not used.
    Returns:
        {SelM-D2 name: tensor}.
    """
    state_dict = strip_ddp_prefix(state_dict)
    _, backbone = identify_official(state_dict)
    converted = _backbone_names(state_dict, backbone)
    visual_prefix = "resnet." if backbone == "R50" else "encoder_backbone."
    for name, value in state_dict.items():
        if name.startswith(visual_prefix) and "DAM_Fusion" not in name:
            continue
        new = _rename(name)
        if new is not None:
            converted[new] = value
    for name, value in vggish_state_dict.items():
        if name.startswith(("features.", "embeddings.")):
            converted["audio_encoder." + name] = torch.as_tensor(value)
    return converted

"""SelM-D2 config keys. ``add_selm_config(cfg)`` adds every key with its default.

New keys live under SelM's own nodes (``MODEL.SELM``, ``MODEL.PVT``, ``INPUT.AVS``,
``TEST.AVS``) so they never collide with detectron2's, on v0.6 or main. The solver keys
(``SOLVER.OPTIMIZER``, ``SOLVER.BACKBONE_MULTIPLIER``) follow Mask2Former's names.

The model defaults are the authors' SelM; a comment marks each SelM-D2 variant.
"""
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from .utils import ConfigError, ConfigKeyError


def add_selm_config(cfg):
    """Add SelM's keys (with defaults) to a detectron2 config, in place."""
    # ---------------------------------------------------------------- model
    # The defaults are the authors' SelM (their released code, which made the paper's numbers
    # and checkpoints); configs/ set the per-task values.
    cfg.MODEL.SELM = CN()
    # K, the number of sounding-object classes: 1 for S4/MS3 (binary), 70 for AVSS.
    # Outputs always carry K+1 channels, channel 0 = background.
    cfg.MODEL.SELM.NUM_CLASSES = 1
    # Width d of the audio tokens and of every level BCSM and CLEVER work on.
    cfg.MODEL.SELM.HIDDEN_DIM = 256
    # Pretrained visual encoder weights loaded at the start of training (ImageNet):
    # torchvision/detectron2 ResNet, original PVT-v2 or timm PVT-v2 files. "" = from scratch.
    # MODEL.WEIGHTS keeps its detectron2 meaning (a whole SelM checkpoint).
    cfg.MODEL.SELM.VISUAL_WEIGHTS = ""
    # Add CLEVER's hit maps and BCSM's audio gates to inference outputs (heat maps).
    cfg.MODEL.SELM.RETURN_MAPS = False

    # VGGish audio encoder (4 conv blocks, then fc layers), run whole on each log-mel example.
    cfg.MODEL.SELM.AUDIO = CN()
    cfg.MODEL.SELM.AUDIO.WEIGHTS = ""  # e.g. vggish-10086976.pth; "" = from scratch
    cfg.MODEL.SELM.AUDIO.FREEZE = True  # the authors keep VGGish frozen
    cfg.MODEL.SELM.AUDIO.CHANNELS = [64, 128, 256, 512]
    cfg.MODEL.SELM.AUDIO.FC_DIMS = [4096, 4096, 128]

    # PVT-v2 visual encoder (timm), used when MODEL.BACKBONE.NAME == "StagedPVTv2".
    cfg.MODEL.PVT = CN()
    cfg.MODEL.PVT.VARIANT = "pvt_v2_b5"  # pvt_v2_b0 .. pvt_v2_b5
    cfg.MODEL.PVT.DROP_PATH_RATE = 0.1
    cfg.MODEL.PVT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]

    # DAM: Dual Alignment Module, audio-visual fusion after every visual stage.
    cfg.MODEL.SELM.DAM = CN()
    cfg.MODEL.SELM.DAM.DROPOUT = 0.0
    # "softmax" (the authors': with one audio token per frame the visual update does not
    # depend on the audio) | "sigmoid" (variant: per pixel-token scores, so it does).
    cfg.MODEL.SELM.DAM.AUDIO_ATTENTION = "softmax"

    # BCSM: Bidirectional Conditioned Selective Mechanism (stacked Mamba blocks).
    cfg.MODEL.SELM.BCSM = CN()
    cfg.MODEL.SELM.BCSM.NUM_BLOCKS = 3

    # Mamba blocks (mamba_ssm.modules.mamba_simple.Mamba hyper-parameters).
    cfg.MODEL.SELM.MAMBA = CN()
    cfg.MODEL.SELM.MAMBA.IMPL = "auto"  # auto | torch | cuda
    cfg.MODEL.SELM.MAMBA.D_STATE = 16
    cfg.MODEL.SELM.MAMBA.D_CONV = 4
    cfg.MODEL.SELM.MAMBA.EXPAND = 2

    # CLEVER: audio-visual Cross-LEVEl Reasoning decoder (the authors' token grouping).
    cfg.MODEL.SELM.CLEVER = CN()
    cfg.MODEL.SELM.CLEVER.NAME = "CLEVER"  # in selm_d2.modeling.SELM_DECODER_REGISTRY
    cfg.MODEL.SELM.CLEVER.NUM_TOKENS = 2
    # Side of each layer's map, coarse to fine: INPUT.AVS.SIZE / 16, / 8, / 4.
    cfg.MODEL.SELM.CLEVER.POS_EMBED_SIZES = [14, 28, 56]
    # Per layer: the audio-carrying token attends to the audio tokens.
    cfg.MODEL.SELM.CLEVER.AUDIO_LAYERS = [True, True, True]
    cfg.MODEL.SELM.CLEVER.AUDIO_DROPOUT = 0.1
    cfg.MODEL.SELM.CLEVER.GROUPING_DROPOUT = [0.1, 0.1, 0.0]
    # 2x upsampling steps of the final (stride-4) map before the dynamic mask convolution.
    cfg.MODEL.SELM.CLEVER.PROJECTOR_UPSAMPLES = 2
    # The token also gives the mask a bias (authors: S4/MS3 yes, AVSS no).
    cfg.MODEL.SELM.CLEVER.PROJECTOR_BIAS = True
    # Gumbel noise in the pixel-to-token assignment at inference too (the authors'), drawn
    # from a generator seeded with SEED at every call; False assigns each pixel to its most
    # similar token.
    cfg.MODEL.SELM.CLEVER.INFERENCE_NOISE = True

    # Losses: mask DICE + BCE (binary) or CE (AVSS), plus a_i * DICE of CLEVER's hit maps.
    cfg.MODEL.SELM.LOSS = CN()
    cfg.MODEL.SELM.LOSS.AUX_WEIGHTS = [0.001, 0.01, 0.1]  # a_1..a_3, coarse to fine

    # ---------------------------------------------------------------- input
    cfg.INPUT.DATASET_MAPPER_NAME = "avs_clip"
    cfg.INPUT.AVS = CN()
    cfg.INPUT.AVS.NUM_FRAMES = 5  # T: one frame per second of audio
    # Clips with fewer frames are padded to this length (AVSS mixes 5- and 10-frame clips);
    # 0 = no padding.
    cfg.INPUT.AVS.PAD_TO_FRAMES = 0
    cfg.INPUT.AVS.SIZE = 224  # test: resize to SIZE x SIZE; train: short edge, then crop
    # Side of the training masks, which the logits are resized to; 0 = SIZE. The authors
    # train on 224 x 224 masks when the frames are 448 x 448.
    cfg.INPUT.AVS.MASK_SIZE = 0
    cfg.INPUT.AVS.CROP = "center"  # center | random (train only)
    cfg.INPUT.AVS.RANDOM_FLIP = False  # AVSBench trains without augmentation
    cfg.INPUT.AVS.SCALE_RANGE = [1.0, 1.0]  # random short-edge scale jitter (train only)
    cfg.INPUT.AVS.AUDIO = CN()
    cfg.INPUT.AVS.AUDIO.SAMPLE_RATE = 16000
    # Audio shorter than T seconds: "repeat_last" (AVSBench S4/MS3 pickles) or "zero_pad" (AVSS).
    cfg.INPUT.AVS.AUDIO.SHORT_POLICY = "repeat_last"
    # Resampling of audio that is not at 16 kHz: "resampy" (AVSBench's torchvggish front-end
    # itself) or "polyphase" (resampy's filter applied by scipy's polyphase filter bank: faster,
    # equal up to float rounding; tests/test_audio.py bounds the log-mel difference).
    cfg.INPUT.AVS.AUDIO.RESAMPLER = "resampy"
    # "auto": precomputed AVSBench log-mel pickle when present, else the wav.
    # "silence": every clip hears digital silence (the visual-only ablation).
    cfg.INPUT.AVS.AUDIO.SOURCE = "auto"  # auto | wav | log_mel | silence

    # ---------------------------------------------------------------- test
    cfg.TEST.AVS = CN()
    # M_F official batch protocol: clips per batch (AVSBench 4, AVSegFormer 2).
    cfg.TEST.AVS.F_BATCH_SIZE = 4
    # Also evaluate with silenced and with another clip's audio (auditory-illusion metrics).
    cfg.TEST.AVS.ILLUSION = False
    # 0: score at the original frame size; N: resize to N x N first (official AVSS: 224).
    cfg.TEST.AVS.EVAL_SIZE = 0
    # AVSS scoring of frames without ground truth:
    # "annotated": only frames with ground truth count;
    # "official": as AVSBench's avss/test.py, every clip padded to 10 frames: padding frames
    # count as predicted and labelled background (the official model zeroes their logits),
    # real frames without a label file are scored against an all-background label.
    cfg.TEST.AVS.AVSS_PROTOCOL = "annotated"
    cfg.register_renamed_key(
        "TEST.AVS.COUNT_PADDED_FRAMES", "TEST.AVS.AVSS_PROTOCOL",
        message="COUNT_PADDED_FRAMES True is AVSS_PROTOCOL 'official', False 'annotated'.")

    # ---------------------------------------------------------------- solver
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # ADAMW | SGD
    cfg.SOLVER.BACKBONE_MULTIPLIER = 1.0  # LR multiplier of the visual encoder
    cfg.SOLVER.AUDIO_MULTIPLIER = 1.0  # LR multiplier of VGGish when unfrozen
    # The visual encoder is frozen for this many iterations, then trained (the authors' MS3
    # ResNet-50: 15 epochs).
    cfg.SOLVER.BACKBONE_FREEZE_ITERS = 0


def load_config(config_file, opts=()):
    """detectron2's defaults + SelM's keys + ``config_file`` + ``opts`` (KEY VALUE ...), not
    frozen. An unknown or renamed key raises a KeyError that names it, where it came from and
    where the keys are listed (yacs alone raises an AssertionError for the command line's)."""
    cfg = get_cfg()
    add_selm_config(cfg)
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except (KeyError, AssertionError) as e:
        message = str(e.args[0]) if e.args else str(e)
        if isinstance(e, AssertionError) and not message.startswith("Non-existent key"):
            raise ConfigError("{}: config options are KEY VALUE pairs".format(message)) from None
        raise ConfigKeyError(
            "{} (from {} or the command line). SelM's keys and their defaults are listed in "
            "selm_d2/config.py; detectron2's in detectron2/config/defaults.py. Check the "
            "spelling or remove the key.".format(message, config_file)) from None
    return cfg

"""SelM-D2 config keys. ``add_selm_config(cfg)`` adds every key with its default.

New keys live under SelM's own nodes (``MODEL.SELM``, ``MODEL.PVT``, ``INPUT.AVS``,
``TEST.AVS``) so they never collide with detectron2's, on v0.6 or main. The solver keys
(``SOLVER.OPTIMIZER``, ``SOLVER.BACKBONE_MULTIPLIER``) follow Mask2Former's names.

Where SelM has a paper-literal choice and a variant of ours, the default is the paper's
(configs/Base-SelM.yaml); configs/Base-SelM-plus.yaml sets ours. The comments say which is which.
"""
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg


def add_selm_config(cfg):
    """Add SelM's keys (with defaults) to a detectron2 config, in place."""
    # ---------------------------------------------------------------- model
    cfg.MODEL.SELM = CN()
    # K, the number of sounding-object classes: 1 for S4/MS3 (binary), 70 for AVSS.
    # Outputs always carry K+1 channels, channel 0 = background.
    cfg.MODEL.SELM.NUM_CLASSES = 1
    # Width of the fused features that BCSM and CLEVER work on.
    cfg.MODEL.SELM.HIDDEN_DIM = 256
    # Pretrained visual encoder weights loaded when the model is built (ImageNet):
    # torchvision/detectron2 ResNet, original PVT-v2 or timm PVT-v2 files. "" = from scratch.
    # MODEL.WEIGHTS keeps its detectron2 meaning (a whole SelM checkpoint).
    cfg.MODEL.SELM.VISUAL_WEIGHTS = ""
    # At inference, run the encoders (and DAM, which works frame by frame) on at most this many
    # frames at a time; the outputs do not change. 0 = all frames of a batch at once.
    cfg.MODEL.SELM.ENCODER_CHUNK_FRAMES = 8
    # Return BCSM selection weight maps in inference outputs (for heat maps, paper Fig. 5).
    cfg.MODEL.SELM.RETURN_SELECTION_MAPS = False

    # VGGish audio encoder (4 conv blocks, then fc layers).
    cfg.MODEL.SELM.AUDIO = CN()
    cfg.MODEL.SELM.AUDIO.WEIGHTS = ""  # e.g. vggish-10086976.pth; "" = from scratch
    cfg.MODEL.SELM.AUDIO.FREEZE = True  # AVSBench protocol; gradients still reach DAM
    cfg.MODEL.SELM.AUDIO.CHANNELS = [64, 128, 256, 512]
    cfg.MODEL.SELM.AUDIO.FC_DIMS = [4096, 4096, 128]

    # PVT-v2 visual encoder (timm), used when MODEL.BACKBONE.NAME == "StagedPVTv2".
    cfg.MODEL.PVT = CN()
    cfg.MODEL.PVT.VARIANT = "pvt_v2_b5"  # pvt_v2_b0 .. pvt_v2_b5
    cfg.MODEL.PVT.DROP_PATH_RATE = 0.1
    cfg.MODEL.PVT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]

    # DAM: Dual Alignment Module, early audio-visual fusion between encoder stages.
    cfg.MODEL.SELM.DAM = CN()
    cfg.MODEL.SELM.DAM.MODE = "dual"  # none | add | concat | a2v | v2a | dual
    cfg.MODEL.SELM.DAM.STAGES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SELM.DAM.DROPOUT = 0.1
    # Conv1D of A2V/V2A's branch over feature positions (paper: "Conv1D", width unstated):
    # "pointwise" (C x C, mixes channels) | "depthwise" (per-channel scale and shift).
    cfg.MODEL.SELM.DAM.FEATURE_CONV = "pointwise"

    # BCSM: Bidirectional Conditioned Selective Mechanism (stacked Mamba blocks).
    cfg.MODEL.SELM.BCSM = CN()
    cfg.MODEL.SELM.BCSM.MODE = "bidirectional"  # off | a2v | v2a | bidirectional
    cfg.MODEL.SELM.BCSM.NUM_BLOCKS = 3
    # Visual features are average-pooled to this grid per frame before the V2A Mamba scan
    # (paper: "average pooling", no grid). 1: one token per frame, as the audio tokens of the
    # mirrored A2V branch. 4 x 4 per frame made SelM-R50's BCSM 47.0 instead of 19.6 ms per
    # 5-frame clip on CPU, at the same accuracy on AVS-Synth (README, "Speed changes and
    # accuracy").
    cfg.MODEL.SELM.BCSM.POOL_SIZE = 1
    # How A2V-SeM's weights select the visual features: "channel" (paper: mirrors V2A-SeM,
    # per-channel weights from the audio tokens) | "spatial" (ours: a spatial map from a
    # query/key product of audio and visual features).
    cfg.MODEL.SELM.BCSM.A2V_SELECTION = "channel"

    # Mamba blocks (mamba_ssm.modules.mamba_simple.Mamba hyper-parameters).
    cfg.MODEL.SELM.MAMBA = CN()
    cfg.MODEL.SELM.MAMBA.IMPL = "auto"  # auto | torch | cuda
    cfg.MODEL.SELM.MAMBA.D_STATE = 16
    cfg.MODEL.SELM.MAMBA.D_CONV = 4
    cfg.MODEL.SELM.MAMBA.EXPAND = 2

    # CLEVER: audio-visual Cross-LEVEl Reasoning decoder (Mask2Former-like), the decoder of
    # SelMHead (MODEL.SEM_SEG_HEAD.NAME "SelMHead").
    cfg.MODEL.SELM.CLEVER = CN()
    cfg.MODEL.SELM.CLEVER.NAME = "CLEVERDecoder"  # in selm_d2.modeling.SELM_DECODER_REGISTRY
    cfg.MODEL.SELM.CLEVER.IN_FEATURES = ["res3", "res4", "res5"]  # decoded coarse to fine
    # Final masks: "dot" (paper: one query per output channel, its dot product with the mixed
    # features is the logit; NUM_QUERIES must be 1 for binary tasks, NUM_CLASSES + 1 for AVSS)
    # | "mix" (ours: a 1x1 conv mixes the NUM_QUERIES query maps into the outputs)
    # | "semantic" (Mask2Former's semantic inference: per-query class scores x query masks).
    cfg.MODEL.SELM.CLEVER.MASK_HEAD = "dot"
    # True (ours): the final masks are made at MASK_IN_FEATURE's stride after fusing it into the
    # last layer's mixed features. False (paper): the last layer's masks are the final ones.
    cfg.MODEL.SELM.CLEVER.MASK_FUSION = False
    # Read only with MASK_FUSION: "res2" (stride 4) or, with a ResNet, "res1" (stride 2: conv1's
    # activation before the max-pool).
    cfg.MODEL.SELM.CLEVER.MASK_IN_FEATURE = "res2"
    cfg.MODEL.SELM.CLEVER.NUM_QUERIES = 1  # paper: not given; "dot" fixes it (see MASK_HEAD)
    cfg.MODEL.SELM.CLEVER.NHEADS = 8
    cfg.MODEL.SELM.CLEVER.DIM_FEEDFORWARD = 2048
    cfg.MODEL.SELM.CLEVER.DROPOUT = 0.0
    cfg.MODEL.SELM.CLEVER.AUDIO_CROSS_ATTN = True  # False: paper Table 5 "w/o audio CA"
    cfg.MODEL.SELM.CLEVER.VIDEO_CROSS_ATTN = True  # False: paper Table 5 "w/o video CA"
    cfg.MODEL.SELM.CLEVER.CROSS_LEVEL = True  # False: single-level decoder, paper Table 3

    # Losses (paper §4.5). A weight of 0 switches a term off (paper Table 8).
    cfg.MODEL.SELM.LOSS = CN()
    cfg.MODEL.SELM.LOSS.DICE_WEIGHT = 1.0
    cfg.MODEL.SELM.LOSS.BCE_WEIGHT = 1.0  # S4/MS3, and AVSS with SEMANTIC "bce"
    cfg.MODEL.SELM.LOSS.CE_WEIGHT = 1.0  # AVSS with SEMANTIC "ce" only
    # AVSS (NUM_CLASSES > 1) losses: "bce" (paper: BCE on the one-hot K+1 channels, BCE_WEIGHT,
    # + auxiliary DICE per channel) | "ce" (ours: softmax CE, CE_WEIGHT, + auxiliary CE).
    cfg.MODEL.SELM.LOSS.SEMANTIC = "bce"
    cfg.MODEL.SELM.LOSS.AUX_WEIGHTS = [0.001, 0.01, 0.1]  # a_1..a_3 of CLEVER layers

    # ---------------------------------------------------------------- input
    cfg.INPUT.DATASET_MAPPER_NAME = "avs_clip"
    cfg.INPUT.AVS = CN()
    cfg.INPUT.AVS.NUM_FRAMES = 5  # T: one frame per second of audio
    # Clips with fewer frames are padded to this length (AVSS mixes 5- and 10-frame clips);
    # 0 = no padding.
    cfg.INPUT.AVS.PAD_TO_FRAMES = 0
    cfg.INPUT.AVS.SIZE = 224  # test: resize to SIZE x SIZE; train: short edge, then crop
    cfg.INPUT.AVS.CROP = "center"  # center | random (train only)
    cfg.INPUT.AVS.RANDOM_FLIP = False  # AVSBench trains without augmentation
    cfg.INPUT.AVS.SCALE_RANGE = [1.0, 1.0]  # random short-edge scale jitter (train only)
    cfg.INPUT.AVS.AUDIO = CN()
    cfg.INPUT.AVS.AUDIO.SAMPLE_RATE = 16000
    # Audio shorter than T seconds: "repeat_last" (AVSBench S4/MS3 pickles) or "zero_pad" (AVSS).
    cfg.INPUT.AVS.AUDIO.SHORT_POLICY = "repeat_last"
    # Resampling of audio that is not at 16 kHz: "resampy" (AVSBench's torchvggish front-end
    # itself) or "polyphase" (resampy's filter by scipy's polyphase filter bank: several times
    # faster, within the log-mel difference measured in the README).
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
    # AVSS scoring of frames without ground truth (README "Metrics"):
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
            raise ValueError("{}: config options are KEY VALUE pairs".format(message)) from None
        raise KeyError(
            "{} (from {} or the command line). SelM's keys and their defaults are listed in "
            "selm_d2/config.py; detectron2's in detectron2/config/defaults.py. Check the "
            "spelling or remove the key.".format(message, config_file)) from None
    return cfg

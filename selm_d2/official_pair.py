"""One of the authors' six released models beside SelM-D2 with the same weights, and clips
that both can run: what the parity tests and ``tools/benchmark.py --sections official`` compare.
"""
import contextlib

import torch

from detectron2.modeling import build_model

from . import official_code
from .config import load_config
from .official import OFFICIAL_CONFIGS, convert_official

__all__ = ["TASK_FOLDERS", "OfficialPair"]

# The authors' task folders.
TASK_FOLDERS = {"s4": "avs_s4", "ms3": "avs_ms3", "avss": "avss"}
# Their S4 / MS3 code hard-codes 5 frames; AVSS clips are padded to 10.
_NUM_FRAMES = {"s4": 5, "ms3": 5, "avss": 10}


class OfficialPair:
    """The authors' ``SelM_R50`` / ``SelM_PVT`` of ``task`` with their VGGish, built with seeded
    random weights (``seed``, ``seed + 1``), and SelM-D2 built from the task's config with those
    weights converted (``convert_official``, loaded strictly: no key missing or unexpected).

    Attributes: ``ref`` (their model, eval mode), ``vggish``, ``model`` (SelM-D2), ``cfg``,
    ``config`` (its file), ``weights`` (the converted state dict), ``mods`` (their modules).
    """

    def __init__(self, task, backbone, opts=(), seed=0):
        """
        Args:
            task: "s4", "ms3" or "avss". backbone: "R50" or "PVT".
            opts: config options for SelM-D2 (``KEY VALUE ...``), e.g. MODEL.DEVICE.
        """
        self.task, self.backbone = task, backbone
        folder = TASK_FOLDERS[task]
        self.mods = official_code.load_task(folder)
        self.ref = official_code.build_official(folder, backbone, seed=seed)
        self.vggish = official_code.build_official_vggish(folder, seed=seed + 1)
        self.config = OFFICIAL_CONFIGS[(task, backbone)]
        self.cfg = load_config(self.config, list(opts))
        self.cfg.freeze()
        self.num_frames = self.cfg.INPUT.AVS.NUM_FRAMES
        if self.num_frames != _NUM_FRAMES[task]:
            raise ValueError("{} has INPUT.AVS.NUM_FRAMES {}; the authors' {} model takes {}".format(
                self.config, self.num_frames, task, _NUM_FRAMES[task]))
        torch.manual_seed(seed)  # SelM-D2's own initialisation, overwritten by the load
        self.model = build_model(self.cfg)
        self.weights = convert_official(self.ref.state_dict(), self.vggish.state_dict())
        self.model.load_state_dict(self.weights, strict=True)

    def random_clip(self, seed, valid_frames=None, unannotated=(), output_size=None,
                    dtype=torch.float32):
        """A clip of random content at the task's input size, for both sides.

        Args:
            valid_frames: how many leading frames are real (AVSS pads shorter clips); all if None.
            unannotated: frames without ground truth (S4 training clips: all but the first).
            output_size: the size SelM-D2 is asked to return; the input size if None.
            dtype: of the log-mel, the normalised frames and the targets (the models' dtype).
        Returns:
            dict: ``clip`` (SelM-D2's mapper-style clip dict: uint8 ``image`` [T, 3, S, S],
            ``audio`` [T, 1, 96, 64], ``frame_valid``, ``sem_seg`` [T, M, M] with 255 on
            unannotated frames, ``frame_mask_flags``), ``frames`` (the same frames normalised
            as the authors' loader does, [T, 3, S, S] float) and ``target`` /
            ``target_flags`` (the ground truth in their loss's layout).
        """
        g = torch.Generator().manual_seed(seed)
        t, size = self.num_frames, self.cfg.INPUT.AVS.SIZE
        mask_size = self.cfg.INPUT.AVS.MASK_SIZE or size
        image = torch.randint(0, 256, (t, 3, size, size), generator=g, dtype=torch.uint8)
        audio = torch.randn(t, 1, 96, 64, generator=g, dtype=dtype)
        valid = torch.ones(t, dtype=torch.bool)
        if valid_frames is not None:
            valid[valid_frames:] = False
        flags = valid.clone()
        flags[list(unannotated)] = False
        if self.task == "avss":
            classes = torch.randint(0, self.cfg.MODEL.SELM.NUM_CLASSES + 1, (4,), generator=g)
            sem_seg = classes[torch.randint(0, 4, (t, mask_size, mask_size), generator=g)]
        else:
            sem_seg = (torch.rand(t, mask_size, mask_size, generator=g) > 0.6).long()
        sem_seg[~flags] = 255
        out = output_size or size
        clip = {"image": image, "audio": audio, "frame_valid": valid, "sem_seg": sem_seg,
                "frame_mask_flags": flags, "height": out, "width": out, "clip_id": "pair"}
        mean = torch.tensor(self.cfg.MODEL.PIXEL_MEAN, dtype=dtype).view(-1, 1, 1)
        std = torch.tensor(self.cfg.MODEL.PIXEL_STD, dtype=dtype).view(-1, 1, 1)
        if self.task == "s4":  # their S4 loss scores the first frame: [1, 1, 1, M, M]
            target = sem_seg[0:1].to(dtype)[:, None, None]
        elif self.task == "ms3":
            target = sem_seg.to(dtype)[:, None]
        else:
            target = sem_seg.clone()
            target[~flags] = 0  # frames without ground truth are weighted 0 by the flags
        return {"clip": clip, "frames": (image.to(dtype) - mean) / std, "target": target,
                "target_flags": flags.to(dtype)}

    def run_reference(self, frames, audio, valid, autocast=contextlib.nullcontext):
        """Their pipeline: VGGish on the log-mel under no_grad (as in their loops), then their
        model. -> (logits [T, K+1, 224, 224], audio features, 3 hit maps)."""
        with torch.no_grad(), autocast():
            embedding = self.vggish(audio)
        with autocast():
            if self.task == "avss":
                return self.ref(frames, embedding, valid.float())
            return self.ref(frames, embedding)

    def reference_loss(self, output, maps, target, target_flags):
        """Their ``loss.Seg_Loss`` of the task (AVSS: the BCE variant their train.sh uses)."""
        if self.task == "avss":
            total, _ = self.mods.loss.Seg_Loss(output, target, target_flags, loss_type="bce",
                                               hitmaps=maps)
        else:
            total, _ = self.mods.loss.Seg_Loss(output, target, hitmaps=maps)
        return total

"""SelM-D2's default configs against the authors' code (../shared/reference/selm_official).

For each of the six released models: the authors' model is built with seeded random weights,
its state dict (and a random VGGish) converted with ``selm_d2.official.convert_official``, and
both are fed the same frames and log-mel examples. Inference must give the same mask logits
and hit maps; one training step the same loss and the same gradient on every parameter.
The decoder's Gumbel noise: in training both draw it from the global generator, seeded alike;
at inference SelM-D2 draws it from a generator seeded with SEED, the authors' code from the
global one, seeded with SEED before the call.
"""
import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.modeling import build_model

from selm_d2 import load_config
from selm_d2.modeling import clever as clever_module
from selm_d2.official import OFFICIAL_CONFIGS, convert_official, identify_official

import official

pytestmark = pytest.mark.slow

CASES = sorted(OFFICIAL_CONFIGS)
_FOLDERS = {"s4": "avs_s4", "ms3": "avs_ms3", "avss": "avss"}


class Pair:
    """The authors' model, its VGGish and SelM-D2 with the converted weights."""

    def __init__(self, task, backbone):
        official.require_official()
        self.task, self.backbone = task, backbone
        self.folder = _FOLDERS[task]
        self.ref = official.build_official(self.folder, backbone, seed=0)
        self.vggish = official.build_official_vggish(self.folder, seed=1)
        self.cfg = load_config(OFFICIAL_CONFIGS[(task, backbone)], [
            "MODEL.DEVICE", "cpu",
            # The training step compares gradients: no dropout, no stochastic depth.
            "MODEL.SELM.CLEVER.AUDIO_DROPOUT", "0.0",
            "MODEL.SELM.CLEVER.GROUPING_DROPOUT", "[0.0, 0.0, 0.0]",
            "MODEL.PVT.DROP_PATH_RATE", "0.0"])
        self.model = build_model(self.cfg)
        self.weights = convert_official(self.ref.state_dict(), self.vggish.state_dict())
        self.model.load_state_dict(self.weights, strict=True)
        self.num_frames = 10 if task == "avss" else 5

    def clip(self, seed):
        """One clip dict (uint8 frames, log-mel, masks) and the authors' normalised frames."""
        g = torch.Generator().manual_seed(seed)
        t, size = self.num_frames, self.cfg.INPUT.AVS.SIZE
        mask_size = self.cfg.INPUT.AVS.MASK_SIZE or size
        image = torch.randint(0, 256, (t, 3, size, size), generator=g, dtype=torch.uint8)
        audio = torch.randn(t, 1, 96, 64, generator=g)
        valid = torch.ones(t, dtype=torch.bool)
        flags = torch.ones(t, dtype=torch.bool)
        if self.task == "avss":
            valid[7:] = False  # a 5-second clip padded to 10 frames would look like this
            flags = valid.clone()
            flags[1] = False
            classes = torch.randint(0, 71, (4,), generator=g)
            sem_seg = classes[torch.randint(0, 4, (t, mask_size, mask_size), generator=g)]
        else:
            sem_seg = (torch.rand(t, mask_size, mask_size, generator=g) > 0.6).long()
            if self.task == "s4":  # S4 training clips annotate the first frame only
                flags[1:] = False
        sem_seg[~flags] = 255
        mean = torch.tensor(self.cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1)
        std = torch.tensor(self.cfg.MODEL.PIXEL_STD).view(-1, 1, 1)
        normalised = (image.float() - mean) / std
        clip = {"image": image, "audio": audio, "frame_valid": valid, "sem_seg": sem_seg,
                "frame_mask_flags": flags, "height": size, "width": size}
        return clip, normalised

    def run_reference(self, normalised, audio, valid):
        embedding = self.vggish(audio)
        if self.task == "avss":
            return self.ref(normalised, embedding, valid.float())
        return self.ref(normalised, embedding)

    def reference_loss(self, output, maps, clip):
        loss = official.load_task(self.folder).loss
        sem_seg, flags = clip["sem_seg"], clip["frame_mask_flags"]
        if self.task == "s4":
            first = sem_seg[0:1].float()[:, None, None]
            total, _ = loss.Seg_Loss(output, first, hitmaps=maps)
        elif self.task == "ms3":
            total, _ = loss.Seg_Loss(output, sem_seg.float()[:, None], hitmaps=maps)
        else:
            labels = sem_seg.clone()
            labels[~flags] = 0  # frames without ground truth are weighted 0 by the flags
            total, _ = loss.Seg_Loss(output, labels, flags.float(), loss_type="bce",
                                     hitmaps=maps)
        return total


@pytest.fixture(scope="module", params=CASES, ids=["{}-{}".format(*c) for c in CASES])
def pair(request):
    # Module scope: pytest runs a case's tests together and builds each pair once (a
    # PVT-v2-b5 pair holds about 1.5 GB of weights).
    return Pair(*request.param)


def test_identify_and_convert_without_leftovers(pair):
    assert identify_official(pair.ref.state_dict()) == (pair.task, pair.backbone)
    ddp = {"module." + k: v for k, v in pair.ref.state_dict().items()}
    assert convert_official(ddp, pair.vggish.state_dict()).keys() == pair.weights.keys()
    # load_state_dict(strict=True) in Pair checked that no key is missing or unexpected.


def test_inference_matches_the_authors_code(pair):
    clip, normalised = pair.clip(seed=1)
    pair.ref.eval()
    pair.model.eval()
    valid = clip["frame_valid"]
    with torch.no_grad():
        # The authors draw the decoder's noise from the global generator (seeded once with
        # their seed); SelM-D2 at inference from one seeded with SEED at every call.
        torch.manual_seed(pair.cfg.SEED)
        ref_logits, _, ref_maps = pair.run_reference(normalised, clip["audio"], valid)
        torch.manual_seed(7)
        logits, maps, _ = pair.model.forward_logits(normalised, clip["audio"], valid[None])
        outputs = pair.model([dict(clip, height=224, width=224)])
    logits = F.interpolate(logits, size=ref_logits.shape[-2:], mode="bilinear",
                           align_corners=True)
    keep = valid
    assert (logits[keep] - ref_logits[keep]).abs().max() <= 1e-4
    assert len(maps) == len(ref_maps) == 3
    for ours, theirs in zip(maps, ref_maps):
        assert ours.shape == theirs.shape
        assert (ours[keep] - theirs[keep]).abs().max() <= 1e-4
    # The detectron2 output: probabilities of the real frames at the requested size.
    probs = outputs[0]["sem_seg"]
    assert probs.shape[0] == int(valid.sum()) and probs.shape[-2:] == (224, 224)


def _decisive_noise(shape, index):
    """Gumbel noise stand-in for the training step: at every pixel one token, drawn at random,
    gets +3. Straight-through assignments are argmaxes, and with real Gumbel noise some pixels
    are near-ties that a rounding difference flips; a margin of at least 1 (cosine similarities
    lie in [-1, 1]) rules that out, while the softmax behind the straight-through gradient
    stays unsaturated."""
    g = torch.Generator().manual_seed(1000 + index)
    winner = torch.randint(0, shape[1], (shape[0], 1) + tuple(shape[2:]), generator=g)
    return torch.zeros(shape).scatter_(1, winner, 3.0)


class _NoiseInjector:
    """Hands both decoders the same sequence of ``_decisive_noise`` tensors."""

    def __init__(self):
        self.calls = 0

    def __call__(self, shape):
        self.calls += 1
        return _decisive_noise(tuple(shape), self.calls)


def _reference_step(pair, clip, normalised, monkeypatch, exact_a2v_norm=False):
    """The authors' loss and {SelM-D2 name: gradient} of one training step.

    ``exact_a2v_norm`` computes the InstanceNorm of their A2V branch in float64: the same
    function, without the float32 rounding that it divides by sqrt(eps).
    """
    inject = _NoiseInjector()
    monkeypatch.setattr(torch.distributions.gumbel.Gumbel, "sample",
                        lambda self, shape: inject(shape))
    handles = []
    if exact_a2v_norm:
        for module in pair.ref.modules():
            if type(module).__name__ == "AV_Interaction":
                norm = module.vis_out[1]
                handles.append(norm.register_forward_hook(
                    lambda m, args, out: F.instance_norm(args[0].double(), eps=m.eps).float()))
    pair.ref.zero_grad()
    output, _, maps = pair.run_reference(normalised, clip["audio"], clip["frame_valid"])
    loss = pair.reference_loss(output, maps, clip)
    loss.backward()
    for handle in handles:
        handle.remove()
    monkeypatch.undo()
    grads = {name: p.grad for name, p in pair.ref.named_parameters() if p.grad is not None}
    return loss.item(), convert_official(grads, {})


# A training step of these two side by side at 448 x 448 needs more than 17 GB: opt in with
# SELM_PARITY_448=1.
_LARGE = {("s4", "PVT"), ("ms3", "PVT")}


def test_training_step_matches_the_authors_code(pair, monkeypatch):
    """One training step: the same loss, and the same gradient on every parameter.

    Their DAM InstanceNorms a map that is constant over the pixels (the attended audio of one
    token): its gradient is 0 in exact arithmetic and rounding divided by sqrt(eps) in
    floating point, and it reaches every parameter before BCSM. A tensor passes when SelM-D2's
    gradient is within 5e-4 x max |gradient| of theirs, plus 1e-7 x the largest gradient of
    the model (float32 rounding), plus twice that InstanceNorm's rounding share of theirs: how
    much theirs moves when it is computed in float64.
    """
    if (pair.task, pair.backbone) in _LARGE and os.environ.get("SELM_PARITY_448") != "1":
        pytest.skip("training step at 448 x 448 (> 17 GB side by side): SELM_PARITY_448=1 runs it")
    clip, normalised = pair.clip(seed=2)
    pair.ref.train()
    pair.ref.freeze(False)  # the authors' MS3 ResNet-50 is frozen only for its first epochs
    for module in pair.ref.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if hasattr(module, "drop_prob"):
            module.drop_prob = 0.0
    ref_loss, ref_grads = _reference_step(pair, clip, normalised, monkeypatch)

    pair.model.train()
    pair.model.zero_grad()
    inject = _NoiseInjector()
    monkeypatch.setattr(clever_module, "gumbel_noise", lambda shape, like, generator=None:
                        inject(shape).to(like))
    loss = sum(pair.model([clip]).values())
    loss.backward()

    assert abs(loss.item() - ref_loss) <= 1e-5 * abs(ref_loss)
    trained = {name: p for name, p in pair.model.named_parameters() if p.requires_grad}
    assert all(name.startswith("audio_encoder.")  # VGGish is frozen on both sides
               for name, p in pair.model.named_parameters() if not p.requires_grad)
    assert all(p.grad is not None for p in trained.values())
    differences = {name: ((p.grad - ref_grads[name]).abs().max().item(),
                          ref_grads[name].abs().max().item()) for name, p in trained.items()}
    # float32 keeps about 7 digits of the largest gradients, which share activations with the
    # small ones: below this, a difference is rounding whatever the tensor's own scale.
    floor = 1e-7 * max(scale for _, scale in differences.values())
    # Convolution weight gradients are float32 sums over every pixel of the clip, computed in
    # another order than the authors' (and timm's PVT-v2 rounds its attention unlike their
    # copy): they differ by up to 2.7e-4 of their maximum (MS3 ResNet-50, 5 x 448²).
    relative = 5e-4
    loose = [name for name, (d, scale) in differences.items() if d > relative * scale + floor]
    if loose:  # their own rounding share, measured only where it is needed
        _, exact = _reference_step(pair, clip, normalised, monkeypatch, exact_a2v_norm=True)
        for name in loose:
            d, scale = differences[name]
            own = (exact[name] - ref_grads[name]).abs().max().item()
            assert d <= relative * scale + floor + 2 * own, (name, d, scale, own)
    print("{} of {} gradients within {} x max |gradient|".format(
        len(trained) - len(loose), len(trained), relative))

"""CLEVER (audio-visual Cross-LEVEl Reasoning decoder), the authors' token-grouping decoder.

Two learnable tokens; three layers, coarse to fine. Layer i

    1. fuses the running map with the next finer level (``Fusion``: concat, 2 x 3x3 conv),
    2. lets the last token attend to the audio tokens (``AudioLoad``),
    3. adds a learned positional embedding to the map and assigns every pixel to one token
       (``TokenGrouping``: cosine similarity, straight-through Gumbel-softmax over tokens);
       the assignment map is the layer's "hit map", and the tokens are updated from the
       pixels assigned to them.

The mask is a dynamic 1x1 convolution of the upsampled final map whose weights are a linear
function of the last token (``DynamicProjector``; AVSS: one map per class).

The authors sample Gumbel noise at inference too (``noise=True``, drawn from a generator
seeded with ``SEED`` at every call); ``noise=False`` assigns each pixel to its most similar
token instead.
"""
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.utils.registry import Registry
from ..utils import ConfigError
from .fast_conv import conv_inference

__all__ = ["CLEVER", "SELM_DECODER_REGISTRY", "build_selm_decoder", "gumbel_noise",
           "hard_gumbel_softmax"]

SELM_DECODER_REGISTRY = Registry("SELM_DECODER")
SELM_DECODER_REGISTRY.__doc__ = """Decoders of SelMHead (MODEL.SELM.CLEVER.NAME): built with
(cfg, feature_channels) and called as decoder(features coarse to fine, audio, audio_mask)."""


def build_selm_decoder(cfg):
    return SELM_DECODER_REGISTRY.get(cfg.MODEL.SELM.CLEVER.NAME)(cfg)


def gumbel_noise(shape, like, generator=None):
    """Gumbel(0, 1) samples, the values ``torch.distributions.Gumbel(0, 1).sample(shape)``
    draws from the same generator state (that class reads only the global generator)."""
    info = torch.finfo(like.dtype)
    low = torch.tensor(info.tiny, dtype=like.dtype, device=like.device)
    high = torch.tensor(1 - info.eps, dtype=like.dtype, device=like.device)
    uniform = torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)
    return -torch.log(-torch.log(low + uniform * (high - low)))


def hard_gumbel_softmax(logits, tau, dim, noise=True, generator=None):
    """One-hot argmax along ``dim`` in the forward pass, softmax gradients in the backward
    (straight-through). With ``noise``, Gumbel(0, 1) noise from ``generator`` (None: the
    global one) is added first."""
    if noise:
        logits = logits + gumbel_noise(logits.shape, logits, generator)
    soft = (logits / tau).softmax(dim)
    index = soft.max(dim, keepdim=True)[1]
    hard = torch.zeros_like(logits).scatter_(dim, index, 1.0)
    return hard - soft.detach() + soft


def _l2norm(x, eps=1e-12):
    return x / (x.pow(2).sum(dim=-1, keepdim=True).sqrt() + eps)


class Mlp(nn.Sequential):
    """Linear, GELU, dropout, Linear, dropout; [..., dim] -> [..., dim]."""

    def __init__(self, dim, hidden, dropout=0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, dim), nn.Dropout(dropout))


def _conv_gn_relu(in_channels, out_channels, kernel_size, bias):
    # In-place ReLU, as the authors' conv_layer: GroupNorm's backward needs its input, not its
    # output, and the full-resolution maps are not copied once more.
    return [nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                      bias=bias),
            nn.GroupNorm(32, out_channels), nn.ReLU(inplace=True)]


def _leaves(layers):
    """The layers of a (nested) Sequential, in order."""
    for layer in layers:
        if isinstance(layer, nn.Sequential):
            yield from _leaves(layer)
        else:
            yield layer


def _run_layers(layers, x):
    """``layers(x)`` for a (nested) Sequential, one leaf layer at a time, so that each map is
    freed as soon as the next exists (a Sequential's caller holds its input until the whole
    Sequential returns); convolutions go through ``conv_inference``."""
    for layer in _leaves(layers):
        x = conv_inference(layer, x) if isinstance(layer, nn.Conv2d) else layer(x)
    return x


class Fusion(nn.Module):
    """Concatenate two maps (the coarser one upsampled) and mix them with two 3x3 convs."""

    def __init__(self, dim):
        super().__init__()
        self.fusion = nn.Sequential(*_conv_gn_relu(2 * dim, dim, 3, bias=True),
                                    *_conv_gn_relu(dim, dim, 3, bias=True))

    def forward(self, coarse, fine):
        """coarse [N, d, h, w], fine [N, d, 2h, 2w] -> [N, d, 2h, 2w]."""
        if coarse.shape[-1] < fine.shape[-1]:
            coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear",
                                   align_corners=True)
        return _run_layers(self.fusion, torch.cat((coarse, fine), dim=1))


class AudioLoad(nn.Module):
    """The last token attends to the audio tokens (single head), then all tokens pass an MLP.

    tokens [N, K, d], audio [N, L, d], audio_mask [N, L] -> tokens [N, K, d].
    """

    def __init__(self, dim, dropout):
        super().__init__()
        self.norm_query = nn.LayerNorm(dim)
        self.norm_audio = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.attn_drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.scale = dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim)

    def forward(self, tokens, audio, audio_mask):
        query = self.q_proj(self.norm_query(tokens[:, -1:]))
        audio = self.norm_audio(audio)
        mask = audio_mask[..., None].to(tokens.dtype)  # [N, L, 1]
        key = self.k_proj(audio) * mask
        value = self.v_proj(audio) * mask
        attn = query @ key.transpose(1, 2) * self.scale + (1e4 * mask.transpose(1, 2) - 1e4)
        attn = self.attn_drop(attn.softmax(dim=-1))
        last = tokens[:, -1:] + self.proj_drop(self.proj(attn @ value))
        return self.mlp(self.norm(torch.cat((tokens[:, :-1], last), dim=1)))


class TokenGrouping(nn.Module):
    """Assign every pixel to one token and update the tokens from their pixels.

    tokens [N, K, d], features [N, d, h, w], pos_embed [h*w, d]
    -> (tokens [N, K, d], assignment [N, K, h, w]); ``noise``: Gumbel noise (from
    ``generator``) or plain argmax.
    """

    def __init__(self, dim, dropout):
        super().__init__()
        self.norm_v = nn.LayerNorm(dim)
        self.norm_t = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim, dropout)
        self.tau = nn.Parameter(torch.ones(1))

    def forward(self, tokens, features, pos_embed, noise=True, generator=None):
        n, _, h, w = features.shape
        pixels = self.norm_v(features.flatten(2).transpose(1, 2) + pos_embed)
        query = _l2norm(self.q_proj(self.norm_t(tokens)))
        key = _l2norm(self.k_proj(pixels))
        similarity = query @ key.transpose(1, 2)  # [N, K, hw]
        tau = self.tau.clamp(max=0).exp()
        assignment = hard_gumbel_softmax(similarity, tau, dim=1, noise=noise, generator=generator)
        weights = assignment / (assignment.sum(dim=-1, keepdim=True) + 1)
        update = self.proj_drop(self.proj(weights @ self.v_proj(pixels)))
        tokens = self.mlp(self.norm(update + tokens))
        return tokens, assignment.view(n, -1, h, w)


class DynamicProjector(nn.Module):
    """Upsample the final map and convolve it (1x1) with weights made from the last token.

    ``vis`` is the authors' upsampling stack ending in a fixed 1x1 conv; the dynamic conv
    follows it. Both are linear, so the fixed conv is applied to the token's weights (one
    [num_outputs, d] x [d, d] product per clip) instead of to every pixel of the
    full-resolution map: the same outputs up to float rounding, without the d-channel map at
    the output size (the largest tensor of the model) or the conv over it.

    Args:
        dim: d.
        num_outputs: mask channels (1 binary, K+1 AVSS).
        upsamples: 2x bilinear upsampling + 3x3 conv steps before the dynamic conv.
        bias: whether the token also gives each output a bias (the authors: binary tasks yes,
            AVSS no).
    """

    def __init__(self, dim, num_outputs, upsamples, bias):
        super().__init__()
        layers = []
        for _ in range(upsamples):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear"),
                       nn.Sequential(*_conv_gn_relu(dim, dim, 3, bias=False))]
        # One Sequential with the fixed 1x1 conv last: the authors' parameter names.
        self.vis = nn.Sequential(*layers, nn.Conv2d(dim, dim, 1))
        self.num_outputs = num_outputs
        self.bias = bias
        self.audio_linear = nn.Linear(dim, num_outputs * (dim + int(bias)))

    def forward(self, features, token):
        """features [N, d, h, w], token [N, d] -> [N, num_outputs, h * 2^upsamples, ...]."""
        *upsampling, fixed = self.vis
        x = _run_layers(upsampling, features)
        n, d = x.shape[:2]
        params = self.audio_linear(token).view(n, self.num_outputs, -1)
        weight = params[..., :d]  # [N, Q, d]
        # dynamic(fixed(x)) = (weight @ W) x + weight @ b (+ the token's bias)
        out = torch.einsum("nqc,nchw->nqhw", weight @ fixed.weight.view(d, d), x)
        out = out + (weight @ fixed.bias)[..., None, None]
        if self.bias:
            out = out + params[..., -1, None, None]
        return out


@SELM_DECODER_REGISTRY.register()
class CLEVER(nn.Module):
    """The authors' decoder: 3 grouping layers over 4 levels, then the dynamic projector."""

    @configurable
    def __init__(self, *, dim, num_tokens, num_outputs, pos_embed_sizes, audio_layers,
                 audio_dropout, grouping_dropout, projector_upsamples, projector_bias,
                 noise=True, noise_seed=-1):
        """
        NOTE: this interface is experimental.

        Args:
            dim: d, the width of every level and of the audio tokens.
            num_tokens: learnable tokens (2); the last one carries the audio.
            num_outputs: mask channels (1 binary, K+1 AVSS).
            pos_embed_sizes: side of each layer's map (input size / 16, / 8, / 4).
            audio_layers: per layer, whether the last token attends to the audio.
            audio_dropout: dropout of the audio attention.
            grouping_dropout: per layer, dropout of the grouping update.
            projector_upsamples, projector_bias: see ``DynamicProjector``.
            noise: Gumbel noise in the assignments at inference (the authors' do).
            noise_seed: at inference, the noise of every call is drawn from a generator
                seeded with it, so that predictions do not depend on what ran before (the
                order of clips, the number of processes); < 0: the global generator. Training
                always draws from the global generator.
        """
        super().__init__()
        num_layers = len(pos_embed_sizes)
        if len(audio_layers) != num_layers or len(grouping_dropout) != num_layers:
            raise ConfigError(
                "MODEL.SELM.CLEVER: POS_EMBED_SIZES, AUDIO_LAYERS and GROUPING_DROPOUT need one "
                "entry per layer; got {}, {} and {}".format(
                    list(pos_embed_sizes), list(audio_layers), list(grouping_dropout)))
        self.tokens = nn.Embedding(num_tokens, dim)
        nn.init.trunc_normal_(self.tokens.weight, std=0.02)
        self.fuses = nn.ModuleList([Fusion(dim) for _ in range(num_layers)])
        self.audio_loads = nn.ModuleList(
            [AudioLoad(dim, audio_dropout) if use else nn.Identity() for use in audio_layers])
        self.pos_embeds = nn.ParameterList(
            [nn.Parameter(torch.randn(size * size, dim) / dim ** 0.5) for size in pos_embed_sizes])
        self.groupings = nn.ModuleList([TokenGrouping(dim, p) for p in grouping_dropout])
        self.pos_embed_sizes = list(pos_embed_sizes)
        self.projector = DynamicProjector(dim, num_outputs, projector_upsamples, projector_bias)
        self.noise = noise
        self.noise_seed = noise_seed

    @classmethod
    def from_config(cls, cfg):
        clever = cfg.MODEL.SELM.CLEVER
        num_classes = cfg.MODEL.SELM.NUM_CLASSES
        return {
            "dim": cfg.MODEL.SELM.HIDDEN_DIM,
            "num_tokens": clever.NUM_TOKENS,
            "num_outputs": 1 if num_classes == 1 else num_classes + 1,
            "pos_embed_sizes": clever.POS_EMBED_SIZES,
            "audio_layers": clever.AUDIO_LAYERS,
            "audio_dropout": clever.AUDIO_DROPOUT,
            "grouping_dropout": clever.GROUPING_DROPOUT,
            "projector_upsamples": clever.PROJECTOR_UPSAMPLES,
            "projector_bias": clever.PROJECTOR_BIAS,
            "noise": clever.INFERENCE_NOISE,
            "noise_seed": cfg.SEED,
        }

    def forward(self, features, audio, audio_mask):
        """
        Args:
            features: list of 4 maps [N, d, h_i, w_i], coarse to fine (strides 32 to 4).
            audio: [N, L, d] audio tokens of each frame.
            audio_mask: [N, L], 1 for real tokens.
        Returns:
            (mask logits [N, num_outputs, H', W'],
             list of per-layer assignment maps [N, num_tokens, h_i, w_i], coarse to fine).
        """
        tokens = self.tokens.weight[None].expand(features[0].shape[0], -1, -1)
        noise = self.noise or self.training
        generator = None
        if noise and not self.training and self.noise_seed >= 0:
            generator = torch.Generator(tokens.device).manual_seed(self.noise_seed)
        x, maps = features[0], []
        for i, fine in enumerate(features[1:]):
            x = self.fuses[i](x, fine)
            size = self.pos_embed_sizes[i]
            if x.shape[-2:] != (size, size):
                raise ConfigError(
                    "CLEVER layer {} works on {}x{} maps but got {}: set "
                    "MODEL.SELM.CLEVER.POS_EMBED_SIZES to the input size (INPUT.AVS.SIZE) "
                    "/ 16, / 8, / 4".format(i, size, size, tuple(x.shape[-2:])))
            if isinstance(self.audio_loads[i], AudioLoad):
                tokens = self.audio_loads[i](tokens, audio, audio_mask)
            tokens, assignment = self.groupings[i](tokens, x, self.pos_embeds[i], noise=noise,
                                                   generator=generator)
            maps.append(assignment)
        return self.projector(x, tokens[:, -1]), maps

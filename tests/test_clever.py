"""CLEVER, the token-grouping decoder, part by part against the authors' decoder.py, plus
its SelM-D2 switches (INFERENCE_NOISE, AUDIO_LAYERS) and errors."""
import pytest
import torch
from torch.nn import functional as F

from detectron2.config import get_cfg

from selm_d2.config import add_selm_config
from selm_d2.utils import cpu_allocation_peak_mb
from selm_d2.modeling.clever import (
    CLEVER,
    SELM_DECODER_REGISTRY,
    AudioLoad,
    DynamicProjector,
    Fusion,
    TokenGrouping,
    build_selm_decoder,
    gumbel_noise,
    hard_gumbel_softmax,
)

import official
from conftest import randomise

D = 32  # GroupNorm(32) in Fusion and the projector


def _theirs():
    official.require_official()
    return official.load_task("avs_ms3").decoder



def _randomise(module, seed, scale=0.1):
    return randomise(module, seed, scale)


def _mlp_names(name):
    return name.replace(".fc1.", ".0.").replace(".fc2.", ".3.")


# ------------------------------------------------------------------ hard Gumbel-softmax

def test_hard_gumbel_softmax_is_one_hot_with_softmax_gradients():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 10, requires_grad=True)
    weights = torch.randn(2, 3, 10)
    tau = 0.7
    out = hard_gumbel_softmax(logits, tau, dim=1, noise=False)
    expected = F.one_hot(logits.argmax(dim=1), 3).permute(0, 2, 1).float()
    assert torch.equal(out.detach(), expected)
    (out * weights).sum().backward()
    leaf = logits.detach().clone().requires_grad_()
    ((leaf / tau).softmax(dim=1) * weights).sum().backward()
    torch.testing.assert_close(logits.grad, leaf.grad)


def test_hard_gumbel_softmax_draws_the_authors_noise():
    """Seeded alike, the noisy version equals the authors' gumbel_softmax (forward and
    gradient), and noise=False their hard_softmax at tau = 1."""
    decoder = _theirs()
    logits = torch.randn(2, 4, 9)
    tau = torch.tensor([0.8])
    results = []
    for fn in (lambda x: hard_gumbel_softmax(x, tau, dim=-2),
               lambda x: decoder.gumbel_softmax(x, tau=tau, dim=-2)):
        leaf = logits.clone().requires_grad_()
        torch.manual_seed(3)
        out = fn(leaf)
        (out * torch.arange(out.numel()).view_as(out).cos()).sum().backward()
        results.append((out.detach(), leaf.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])
    assert not torch.equal(results[0][0], hard_gumbel_softmax(logits, tau, dim=-2, noise=False))
    torch.testing.assert_close(hard_gumbel_softmax(logits, 1.0, dim=-2, noise=False),
                               decoder.hard_softmax(logits, dim=-2))


# ------------------------------------------------------------------ the parts

def test_fusion_equals_the_authors_fusion():
    theirs = _randomise(_theirs().Fusion(D, D, D, bias=True), seed=1).eval()
    ours = Fusion(D).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    coarse, fine = torch.randn(2, D, 3, 3), torch.randn(2, D, 6, 6)
    with torch.no_grad():
        # At CPU inference the 3x3 convolutions run NNPACK's fast algorithm (fast_conv.py):
        # rounding of about 1e-5 of the largest output.
        torch.testing.assert_close(ours(coarse, fine), theirs(coarse, fine), rtol=1e-4,
                                   atol=1e-4)


def test_audio_load_equals_the_authors_load_layer():
    """The authors' LoadLayer (pe_shape >= 14): cross-attention of the last token to the audio
    (kv width 256, hard-coded), then the tokens' LayerNorm + MLP; the LoadToken's own norm and
    MLP are never called and have no counterpart."""
    theirs = _randomise(_theirs().LoadLayer(256, drop=0.1, bias=False, pe_shape=14),
                        seed=2).eval()
    ours = AudioLoad(256, dropout=0.1).eval()
    names = [("loadtoken.cross_attn.", ""), ("loadtoken.normq.", "norm_query."),
             ("loadtoken.normk.", "norm_audio."), ("norm.", "norm."), ("mlp.", "mlp.")]
    weights = {}
    for name, value in theirs.state_dict().items():
        for old, new in names:
            if name.startswith(old):
                weights[_mlp_names(new + name[len(old):])] = value
                break
    ours.load_state_dict(weights, strict=True)
    torch.manual_seed(4)
    tokens, audio = torch.randn(3, 2, 256), torch.randn(3, 4, 256)
    mask = torch.ones(3, 4)
    mask[1, 2:] = 0
    mask[2] = 0
    with torch.no_grad():
        expected, _ = theirs(tokens, audio.permute(0, 2, 1), mask[..., None])
        torch.testing.assert_close(ours(tokens, audio, mask), expected, rtol=1e-4, atol=1e-5)


def _grouping_pair(seed=5, dropout=0.0):
    theirs = _randomise(_theirs().CGAttention(D, D, D, drop=dropout, bias=True), seed=seed)
    ours = TokenGrouping(D, dropout)
    ours.load_state_dict({_mlp_names(k): v for k, v in theirs.state_dict().items()},
                         strict=True)
    return theirs.eval(), ours.eval()


def test_token_grouping_equals_the_authors_cgattention():
    """Seeded alike (the Gumbel noise), tokens and hit maps equal the authors' CGAttention."""
    theirs, ours = _grouping_pair()
    torch.manual_seed(6)
    tokens, features, pos = torch.randn(2, 2, D), torch.randn(2, D, 4, 5), torch.randn(20, D)
    with torch.no_grad():
        torch.manual_seed(7)
        out, assignment = ours(tokens, features, pos)
        torch.manual_seed(7)
        ref_out, ref_map = theirs(tokens, features, pe=pos)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    assert torch.equal(assignment, ref_map)
    assert assignment.shape == (2, 2, 4, 5)
    assert torch.equal(assignment.sum(dim=1), torch.ones(2, 4, 5))  # one token per pixel


def test_token_grouping_without_noise_assigns_the_most_similar_token():
    """noise=False: deterministic, and each pixel goes to the token of highest cosine
    similarity (written out with torch ops)."""
    _, ours = _grouping_pair(seed=8)
    torch.manual_seed(9)
    tokens, features, pos = torch.randn(2, 3, D), torch.randn(2, D, 4, 4), torch.randn(16, D)
    with torch.no_grad():
        torch.manual_seed(0)
        first = ours(tokens, features, pos, noise=False)
        torch.manual_seed(1)
        second = ours(tokens, features, pos, noise=False)
        pixels = F.layer_norm(features.flatten(2).transpose(1, 2) + pos, (D,),
                              ours.norm_v.weight, ours.norm_v.bias)
        queries = F.layer_norm(tokens, (D,), ours.norm_t.weight, ours.norm_t.bias)
        q = F.normalize(F.linear(queries, ours.q_proj.weight, ours.q_proj.bias), dim=-1)
        k = F.normalize(F.linear(pixels, ours.k_proj.weight, ours.k_proj.bias), dim=-1)
        best = torch.einsum("nkc,npc->nkp", q, k).argmax(dim=1).view(2, 4, 4)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(first[1].argmax(dim=1), best)
    assert len(best.unique()) > 1  # not a degenerate all-one-token map


@pytest.mark.parametrize("backbone,upsamples", [("resnet", 1), ("pvt", 2)])
def test_binary_projector_equals_the_authors_dprojector(backbone, upsamples):
    """MS3's DProjector: the token gives the weights and bias of a per-frame 1x1 conv, run by
    the authors as one grouped convolution."""
    theirs = _randomise(_theirs().DProjector(audio_dim=D, in_dim=D, backbone=backbone),
                        seed=10).eval()
    ours = DynamicProjector(D, 1, upsamples=upsamples, bias=True).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    features, token = torch.randn(3, D, 3, 4), torch.randn(3, D)
    with torch.no_grad():
        out = ours(features, token)
        expected = theirs(features, token)
    assert out.shape == (3, 1, 3 * 2 ** upsamples, 4 * 2 ** upsamples)
    # NNPACK's 3x3 convolutions at CPU inference round to about 1e-5 (fast_conv.py).
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_semantic_projector_equals_the_authors_avss_dprojector():
    """AVSS's DProjector: 71 outputs (70 classes + background) of width 256, no bias, as an
    einsum."""
    official.require_official()
    theirs = _randomise(official.load_task("avss").decoder.DProjector(audio_dim=256, in_dim=256),
                        seed=11, scale=0.02).eval()
    ours = DynamicProjector(256, 71, upsamples=2, bias=False).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    features, token = torch.randn(2, 256, 2, 2), torch.randn(2, 256)
    with torch.no_grad():
        out = ours(features, token)
        expected = theirs(features, token)
    assert out.shape == (2, 71, 8, 8)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_projector_holds_two_output_size_maps_at_most():
    """The full-resolution maps dominate the model's inference memory. On a clip of 5 frames
    the projector holds at most two d-channel maps of the output size at once (a layer's input
    and output), plus one band of rows of a frame that the convolution reads and writes (here
    about 100 of 160 rows: 0.13 map each): its fixed 1x1 conv acts on the token's weights, each
    map is freed once the next exists, and each band's output is copied into the layer's as
    it comes. (40 x 40 features: below that, PyTorch's bilinear upsampling allocates more than
    its output.)"""
    projector = DynamicProjector(D, 1, upsamples=2, bias=True).eval()
    features, token = torch.randn(5, D, 40, 40), torch.randn(5, D)
    map_mb = features.numel() * 4 ** 2 * features.element_size() / 2**20  # [5, D, 160, 160]
    with torch.inference_mode():
        peak = cpu_allocation_peak_mb(lambda: projector(features, token))
    assert peak is not None, "this torch's profiler records no allocations"
    assert peak <= 2.3 * map_mb, (peak, map_mb)


# ------------------------------------------------------------------ the decoder

SIZES = [2, 4, 8]  # maps of a 32 x 32 input at strides 16, 8, 4


def _clever(**kwargs):
    args = dict(dim=D, num_tokens=2, num_outputs=1, pos_embed_sizes=SIZES,
                audio_layers=[True, True, True], audio_dropout=0.0,
                grouping_dropout=[0.0, 0.0, 0.0], projector_upsamples=1, projector_bias=True,
                noise=True)
    args.update(kwargs)
    torch.manual_seed(0)
    return _randomise(CLEVER(**args), seed=12).eval()


def _decoder_inputs(n=4, seed=13):
    g = torch.Generator().manual_seed(seed)
    features = [torch.randn(n, D, s, s, generator=g) for s in [1] + SIZES]
    return features, torch.randn(n, 1, D, generator=g), torch.ones(n, 1)


def test_decoder_shapes():
    clever = _clever(num_tokens=3, num_outputs=5, projector_bias=False)
    features, audio, mask = _decoder_inputs()
    with torch.no_grad():
        logits, maps = clever(features, audio, mask)
    assert logits.shape == (4, 5, 16, 16)
    assert [tuple(m.shape) for m in maps] == [(4, 3, s, s) for s in SIZES]
    for m in maps:
        assert torch.equal(m.sum(dim=1), torch.ones_like(m[:, 0]))


def test_inference_noise_switch():
    """INFERENCE_NOISE True (the authors'): Gumbel noise at inference too, so eval outputs
    vary with the random state; False: argmax, the same whatever the seed."""
    features, audio, mask = _decoder_inputs()
    outputs = {}
    for noise in (True, False):
        clever = _clever(noise=noise)
        runs = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            with torch.no_grad():
                runs.append(clever(features, audio, mask))
        outputs[noise] = runs
    noisy, plain = outputs[True], outputs[False]
    assert not torch.equal(noisy[0][0], noisy[1][0])
    assert any(not torch.equal(a, b) for a, b in zip(noisy[0][1], noisy[1][1]))
    assert torch.equal(plain[0][0], plain[1][0])
    assert all(torch.equal(a, b) for a, b in zip(plain[0][1], plain[1][1]))
    # Training always samples the noise (the authors train with it).
    clever = _clever(noise=False).train()
    torch.manual_seed(0)
    first = clever(features, audio, mask)[0]
    torch.manual_seed(1)
    assert not torch.equal(first, clever(features, audio, mask)[0])


def test_inference_noise_seeded_by_seed():
    """With a seed (the configs' SEED), inference draws the noise of each call from a generator
    seeded with it: the same output whatever the global random state, and the output the
    global generator gives right after torch.manual_seed(SEED), as the authors' code draws."""
    features, audio, mask = _decoder_inputs()
    seeded = _clever(noise=True, noise_seed=123)
    unseeded = _clever(noise=True)
    with torch.no_grad():
        torch.manual_seed(0)
        first = seeded(features, audio, mask)
        torch.manual_seed(1)
        second = seeded(features, audio, mask)
        torch.manual_seed(123)
        reference = unseeded(features, audio, mask)
    assert torch.equal(first[0], second[0]) and torch.equal(first[0], reference[0])
    for a, b in zip(first[1], reference[1]):
        assert torch.equal(a, b)


def test_gumbel_noise_draws_what_torch_distributions_draws():
    torch.manual_seed(21)
    expected = torch.distributions.gumbel.Gumbel(torch.tensor(0.0), torch.tensor(1.0)).sample(
        (3, 257))
    generator = torch.Generator().manual_seed(21)
    assert torch.equal(gumbel_noise((3, 257), torch.zeros(()), generator), expected)


def test_audio_layers_switch():
    """A layer with AUDIO_LAYERS False has no audio attention: the tokens it groups with are
    independent of the audio (its hit map too); the next layers still read the audio."""
    features, audio, mask = _decoder_inputs()
    other = audio + torch.randn(audio.shape)
    clever = _clever(noise=False, audio_layers=[False, True, True])
    assert not isinstance(clever.audio_loads[0], AudioLoad)
    assert isinstance(clever.audio_loads[1], AudioLoad)
    with torch.no_grad():
        logits, maps = clever(features, audio, mask)
        logits2, maps2 = clever(features, other, mask)
    assert torch.equal(maps[0], maps2[0])
    assert not torch.allclose(logits, logits2)

    deaf = _clever(noise=False, audio_layers=[False, False, False])
    assert not any(isinstance(m, AudioLoad) for m in deaf.modules())
    with torch.no_grad():
        torch.testing.assert_close(deaf(features, audio, mask)[0], deaf(features, other, mask)[0],
                                   rtol=0, atol=0)
    hearing = _clever(noise=False)
    with torch.no_grad():
        first, _ = hearing(features, audio, mask)
        second, _ = hearing(features, other, mask)
    assert not torch.allclose(first, second)


def test_masked_audio_does_not_reach_the_tokens():
    """A padding frame (audio mask 0): its audio token changes nothing; frames are decoded
    independently of each other."""
    clever = _clever(noise=False)
    features, audio, mask = _decoder_inputs()
    mask[2] = 0
    changed = audio.clone()
    changed[2] += 5.0
    with torch.no_grad():
        logits, _ = clever(features, audio, mask)
        logits2, _ = clever(features, changed, mask)
        alone, _ = clever([f[:1] for f in features], audio[:1], mask[:1])
    torch.testing.assert_close(logits, logits2, rtol=0, atol=1e-6)
    torch.testing.assert_close(alone, logits[:1], rtol=1e-4, atol=1e-5)


def test_pos_embed_size_mismatch_names_the_key():
    clever = _clever(pos_embed_sizes=[3, 6, 12])
    features, audio, mask = _decoder_inputs()
    with pytest.raises(ValueError, match="MODEL.SELM.CLEVER.POS_EMBED_SIZES"):
        clever(features, audio, mask)
    with pytest.raises(ValueError, match="one entry per layer"):
        _clever(audio_layers=[True, True])


def test_gradients_reach_every_parameter_in_training():
    clever = _clever().train()
    features, audio, mask = _decoder_inputs()
    features = [f.requires_grad_() for f in features]
    logits, maps = clever(features, audio.requires_grad_(), mask)
    (logits.square().mean() + sum(m[:, -1].mean() for m in maps)).backward()
    missing = [n for n, p in clever.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(f.grad is not None for f in features) and audio.grad is not None


def test_from_config_and_registry():
    """Built by name from MODEL.SELM.CLEVER.NAME; K classes give the authors' K + 1 outputs
    (AVSS: 71 = 70 + background) and one output for the binary tasks."""
    cfg = get_cfg()
    add_selm_config(cfg)
    cfg.MODEL.SELM.HIDDEN_DIM = D
    cfg.MODEL.SELM.NUM_CLASSES = 70
    cfg.MODEL.SELM.CLEVER.POS_EMBED_SIZES = [2, 4, 8]
    cfg.MODEL.SELM.CLEVER.PROJECTOR_BIAS = False
    cfg.MODEL.SELM.CLEVER.INFERENCE_NOISE = False
    cfg.MODEL.SELM.CLEVER.AUDIO_LAYERS = [False, True, True]
    assert SELM_DECODER_REGISTRY.get("CLEVER") is CLEVER
    clever = build_selm_decoder(cfg)
    assert type(clever) is CLEVER and clever.noise is False
    assert clever.projector.audio_linear.out_features == 71 * D
    assert [p.shape[0] for p in clever.pos_embeds] == [4, 16, 64]
    assert [isinstance(m, AudioLoad) for m in clever.audio_loads] == [False, True, True]
    cfg.MODEL.SELM.NUM_CLASSES = 1
    cfg.MODEL.SELM.CLEVER.PROJECTOR_BIAS = True
    assert build_selm_decoder(cfg).projector.audio_linear.out_features == D + 1
    cfg.MODEL.SELM.CLEVER.NAME = "FPNDecoder"
    with pytest.raises(KeyError, match="FPNDecoder"):
        build_selm_decoder(cfg)

"""AVS-Synth frames: objects drawn over a textured background, and their label maps."""
import math

import numpy as np

from .scene import CATEGORY_LOOKS, random_stream


def _shape_mask(shape, u, v):
    """Inside test of a unit-radius shape in object coordinates (u right, v down)."""
    if shape == "disc":
        return u * u + v * v <= 1.0
    if shape == "ring":
        rr = u * u + v * v
        return (rr <= 1.0) & (rr >= 0.25)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "triangle":  # apex up at v = -1, base at v = 0.8
        return (v <= 0.8) & (np.abs(u) <= (v + 1.0) / 1.8)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.35) & (av <= 0.95)) | ((av <= 0.35) & (au <= 0.95))
    raise ValueError("unknown shape {!r}".format(shape))


def _object_patches(scene, obj):
    """Per frame, the object's bounding box and the object coordinates inside it.

    Yields (t, rows, cols, u, v, inside): rows/cols are slices of the frame, u/v float32
    [h, w] the pixel-centre offsets from the object centre divided by its radius, inside bool
    [h, w] the silhouette. Working on the box only keeps rendering ~10x cheaper than full
    frames.
    """
    shape = CATEGORY_LOOKS[scene.categories[obj.category]][0]
    for t in range(scene.num_frames):
        (cx, cy), r = obj.centers[t], obj.radii[t]
        x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, scene.size)
        y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, scene.size)
        u = ((np.arange(x0, x1, dtype=np.float32) + 0.5 - cx) / r)[None, :]
        v = ((np.arange(y0, y1, dtype=np.float32) + 0.5 - cy) / r)[:, None]
        u, v = np.broadcast_arrays(u, v)
        yield t, slice(y0, y1), slice(x0, x1), u, v, _shape_mask(shape, u, v)


def object_masks(scene):
    """bool [N, T, H, W]: the full (unoccluded) silhouette of every object in every frame."""
    masks = np.zeros((len(scene.objects), scene.num_frames, scene.size, scene.size), bool)
    for i, obj in enumerate(scene.objects):
        for t, rows, cols, _, _, inside in _object_patches(scene, obj):
            masks[i, t, rows, cols] = inside
    return masks


def _background(rng, size, num_frames):
    """Background [T, H, W, 3] float32 and its texture [H, W, 1].

    A muted, smoothly varying colour field with a static 2x2-pixel grain (coarse grain keeps
    PNG encoding fast) and a per-frame brightness flicker.
    """
    base = rng.uniform(70.0, 150.0)
    coarse = base + rng.uniform(-35.0, 35.0, size=(3, 4, 4))
    # Bilinear upsampling of the 4x4 grid as a separable matrix product.
    pos = np.clip((np.arange(size) + 0.5) * 4.0 / size - 0.5, 0.0, 3.0)
    lo = np.minimum(pos.astype(int), 2)
    frac = pos - lo
    interp = np.zeros((size, 4))
    interp[np.arange(size), lo] = 1.0 - frac
    interp[np.arange(size), lo + 1] = frac
    field = (interp @ coarse @ interp.T).transpose(1, 2, 0).astype(np.float32)
    half = (size + 1) // 2
    grain = rng.standard_normal((half, half, 1), dtype=np.float32) * 10.0
    grain = np.repeat(np.repeat(grain, 2, axis=0), 2, axis=1)[:size, :size]
    flicker = rng.uniform(0.97, 1.03, size=(num_frames, 1, 1, 1)).astype(np.float32)
    return (field + grain)[None] * flicker, grain


def render_frames(scene):
    """Render a clip.

    Returns:
        frames: uint8 [T, H, W, 3] RGB.
        owner: int8 [T, H, W], index of the object visible at each pixel, -1 = background.
    """
    rng = random_stream(scene, 1)
    frames, grain = _background(rng, scene.size, scene.num_frames)
    owner = np.full(frames.shape[:3], -1, dtype=np.int8)
    for index, obj in enumerate(scene.objects):
        _, colour, angle, period = CATEGORY_LOOKS[scene.categories[obj.category]]
        tint = np.asarray(colour, np.float32) * rng.uniform(0.85, 1.1)
        a = math.radians(angle)
        for t, rows, cols, u, v, inside in _object_patches(scene, obj):
            stripe = np.floor((u * math.cos(a) + v * math.sin(a)) / period) % 2 == 0
            shade = np.where(stripe[inside], 1.0, 0.55).astype(np.float32)
            # Objects carry the frame's grain too: no clean-edge shortcut, no extra entropy.
            frames[t, rows, cols][inside] = shade[:, None] * tint + 0.6 * grain[rows, cols][inside]
            owner[t, rows, cols][inside] = index
    return np.clip(frames, 0.0, 255.0).round().astype(np.uint8), owner


def label_maps(scene, owner):
    """uint8 [T, H, W] ground truth: class index (category + 1) of the visible sounding
    object at each pixel, 0 = background or silent object. Binary tasks use ``> 0``."""
    num_objects = len(scene.objects)
    # Row -1 (owner = -1, background) stays 0.
    classes = np.zeros((num_objects + 1, scene.num_frames), dtype=np.uint8)
    for i, obj in enumerate(scene.objects):
        classes[i] = (obj.category + 1) * obj.sounding
    return classes[owner, np.arange(scene.num_frames)[:, None, None]]

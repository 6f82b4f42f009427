"""Ground-truth mask decoding for AVSBench S4/MS3 (binary) and AVSS (semantic) labels.

Mask formats (the ``mask_format`` of a dataset dict):

- ``"binary"``: S4/MS3 ``gt_masks`` PNGs. Released files are 8-bit 0/255, but L, P, 1-bit,
  LA and RGB(A) files are all accepted: foreground = value > 0 (P: palette index > 0,
  RGB: any colour channel > 0). Result: 0/1.
- ``"avss_rgb"``: AVSS ``labels_rgb`` PNGs, coloured with the 71-colour PASCAL-VOC
  bit-interleaved palette (class 0 = background = black). Every pixel must hold one of
  the palette colours exactly; the official loader silently maps other colours to
  background, here they raise, since they mean a re-encoded (anti-aliased, JPEG) label.
- ``"avss_index"``: AVSS ``labels_semantic`` PNGs, 8-bit (mode L or P) holding the class
  index 0..70; 255 is kept as "ignore".
"""
import functools
import os

import numpy as np
from PIL import Image
from ..utils import DataError, MissingFileError

__all__ = [
    "AVSS_NUM_CLASSES",
    "IGNORE_LABEL",
    "MASK_FORMATS",
    "avss_palette",
    "read_mask",
    "read_clip_masks",
]

AVSS_NUM_CLASSES = 71  # 70 sounding-object classes + background (index 0)
IGNORE_LABEL = 255
MASK_FORMATS = ("binary", "avss_rgb", "avss_index")


def avss_palette(num_classes=AVSS_NUM_CLASSES):
    """PASCAL-VOC bit-interleaved colour map, the AVSS ``labels_rgb`` palette.

    Bit j of the class index's r/g/b bit triplets goes to bit 7-j of the channel, e.g.
    class 1 -> (128, 0, 0), 14 -> (64, 128, 128), 70 -> (32, 128, 128).

    Returns:
        uint8 array [num_classes, 3]; row k is the RGB colour of class k.
    """
    index = np.arange(num_classes, dtype=np.int64)
    palette = np.zeros((num_classes, 3), dtype=np.int64)
    for shift in range(8):
        triplet = (index >> (3 * shift)) & 7
        for channel in range(3):
            palette[:, channel] |= ((triplet >> channel) & 1) << (7 - shift)
    return palette.astype(np.uint8)


def _pack_rgb(rgb):
    """int32 key r<<16 | g<<8 | b of uint8 colours [..., 3]."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


@functools.lru_cache(maxsize=None)
def _palette_lookup():
    """(sorted packed palette colours, class index of each) for searchsorted decoding."""
    keys = _pack_rgb(avss_palette())
    order = np.argsort(keys)
    return keys[order], order.astype(np.uint8)


def _open_image(path, what):
    if not os.path.isfile(path):
        raise MissingFileError(
            "{} not found: {}. Check the dataset root (DETECTRON2_DATASETS) and run "
            "`python -m selm_d2.data.check_avsbench <root>` to list every missing file.".format(
                what, path)
        )
    try:
        image = Image.open(path)
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(
            "Cannot decode {} {} ({}: {}). Replace it with a valid PNG from the dataset "
            "release.".format(what.lower(), path, type(e).__name__, e)
        ) from e
    return image


def _binary(image):
    # P files store indices (their colours are arbitrary), so no palette conversion here.
    array = np.asarray(image)
    if image.mode in ("LA", "PA", "RGBA"):
        array = array[..., :-1]  # alpha is transparency, not foreground
    if array.ndim == 3:
        array = array.max(axis=2)
    return (array > 0).astype(np.uint8)


def _avss_rgb(image, path):
    rgb = np.asarray(image.convert("RGB"))
    keys, classes = _palette_lookup()
    packed = _pack_rgb(rgb)
    position = np.minimum(np.searchsorted(keys, packed), len(keys) - 1)
    known = keys[position] == packed
    if not known.all():
        unknown = np.unique(packed[~known])
        shown = ", ".join(
            "({}, {}, {})".format(k >> 16, (k >> 8) & 255, k & 255) for k in unknown[:5].tolist()
        )
        raise DataError(
            "AVSS label file {} holds colour(s) {}{} ({} pixels) that are not in the 71-colour "
            "AVSBench palette (selm_d2.data.masks.avss_palette). labels_rgb files must use the "
            "palette colours exactly: re-export the label as a lossless PNG without "
            "anti-aliasing or resizing with interpolation, or provide labels_semantic/ "
            "index PNGs instead.".format(
                path, shown, " and {} more".format(len(unknown) - 5) if len(unknown) > 5 else "",
                int((~known).sum()))
        )
    return classes[position]


def _avss_index(image, path):
    if image.mode not in ("L", "P"):
        raise DataError(
            "AVSS index label {} has PIL mode {}; labels_semantic files must be 8-bit "
            "single-channel (mode L or P) PNGs holding the class index. For colour labels use "
            "mask_format 'avss_rgb' (labels_rgb/).".format(path, image.mode)
        )
    index = np.array(image, dtype=np.uint8)
    bad = (index >= AVSS_NUM_CLASSES) & (index != IGNORE_LABEL)
    if bad.any():
        raise DataError(
            "AVSS index label {} holds value(s) {} outside the class range 0..{} (255 = "
            "ignore). Check that the file stores class indices, not colours or 0/255 "
            "masks.".format(path, np.unique(index[bad])[:5].tolist(), AVSS_NUM_CLASSES - 1)
        )
    return index


def read_mask(path, mask_format):
    """Read one ground-truth mask.

    Args:
        path: PNG file.
        mask_format: "binary" | "avss_rgb" | "avss_index" (see the module docstring).
    Returns:
        uint8 array [H, W]: 0/1 for binary masks, the class index for AVSS.
    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: undecodable file, unknown palette colour (named), out-of-range index,
            unknown mask_format.
    """
    if mask_format not in MASK_FORMATS:
        raise DataError(
            "Unknown mask_format {!r} for {}; expected one of {}.".format(
                mask_format, path, MASK_FORMATS)
        )
    image = _open_image(path, "Mask file")
    if mask_format == "binary":
        return _binary(image)
    if mask_format == "avss_rgb":
        return _avss_rgb(image, path)
    return _avss_index(image, path)


def read_clip_masks(dataset_dict, ignore_label=IGNORE_LABEL):
    """Read the masks of every frame of a clip at the original frame size.

    Args:
        dataset_dict: a clip dict with "sem_seg_file_names" (None = unannotated frame),
            "mask_format", "height" and "width".
        ignore_label: value of unannotated frames (and of "ignore" pixels of index labels).
    Returns:
        uint8 array [T_clip, height, width]; unannotated frames are all `ignore_label`.
    Raises:
        ValueError: a mask whose size differs from height x width (the file is named).
    """
    height, width = dataset_dict["height"], dataset_dict["width"]
    paths = dataset_dict["sem_seg_file_names"]
    masks = np.full((len(paths), height, width), ignore_label, dtype=np.uint8)
    for t, path in enumerate(paths):
        if path is None:
            continue
        mask = read_mask(path, dataset_dict["mask_format"])
        if mask.shape != (height, width):
            raise DataError(
                "Mask {} is {}x{} (WxH) but the frames of clip {!r} are {}x{}. Masks must have "
                "their frame's size: re-export the mask at the frame resolution.".format(
                    path, mask.shape[1], mask.shape[0], dataset_dict.get("clip_id"), width,
                    height)
            )
        if ignore_label != IGNORE_LABEL:
            mask = np.where(mask == IGNORE_LABEL, ignore_label, mask).astype(np.uint8)
        masks[t] = mask
    return masks

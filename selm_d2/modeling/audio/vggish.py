"""VGGish audio encoder with per-stage outputs, so DAM can sit between its conv blocks.

Layer layout and parameter names are those of the widely used PyTorch port
(harritaylor/torchvggish, ``vggish-10086976.pth``): ``features.<i>`` convolutions and
``embeddings.<i>`` fully connected layers, so that file loads with a plain state-dict
load. PCA post-processing is not part of the model (AVSBench does not use it).
"""
from torch import nn

from detectron2.config import configurable

from ..backbone.weights import load_checked_state_dict, read_weights_file
from ..cpu_inference import MaxPool2d

__all__ = ["VGGish", "load_vggish_weights"]

# Index ranges of each conv block in ``features`` (conv, ReLU, ..., max-pool).
_STAGE_SLICES = {"conv1": (0, 3), "conv2": (3, 6), "conv3": (6, 11), "conv4": (11, 16)}
# A [96, 64] log-mel example is halved by each of the 4 max-pools.
_EMBEDDING_GRID = (6, 4)


class VGGish(nn.Module):
    """
    VGGish: 4 conv blocks (widths ``channels``, each ending in a 2x2 max-pool) on
    [N, 1, 96, 64] log-mel examples, then fully connected layers ``fc_dims`` to the
    128-d embedding. Frozen (``freeze=True``) it has no trainable parameters and stays in
    eval mode, but gradients still flow through it to its inputs and intermediate
    features (DAM alters those between stages).
    """

    stage_names = tuple(_STAGE_SLICES)

    @configurable
    def __init__(self, *, channels=(64, 128, 256, 512), fc_dims=(4096, 4096, 128), freeze=False):
        """
        Args:
            channels (tuple[int]): widths of conv1..conv4 (conv3 and conv4 hold two convs).
            fc_dims (tuple[int]): output sizes of the 3 fully connected layers.
            freeze (bool): no trainable parameters, always in eval mode.
        """
        super().__init__()
        if len(channels) != 4 or len(fc_dims) != 3:
            raise ValueError(
                "VGGish needs 4 MODEL.SELM.AUDIO.CHANNELS and 3 MODEL.SELM.AUDIO.FC_DIMS, got {} "
                "and {}.".format(list(channels), list(fc_dims))
            )
        c1, c2, c3, c4 = channels
        # (in, out) convolutions; "M" = 2x2 max-pool closing a block.
        layout = [(1, c1), "M", (c1, c2), "M", (c2, c3), (c3, c3), "M", (c3, c4), (c4, c4), "M"]
        layers = []
        for item in layout:
            if item == "M":
                layers.append(MaxPool2d(kernel_size=2, stride=2))
            else:
                conv = nn.Conv2d(item[0], item[1], kernel_size=3, padding=1)
                layers += [conv, nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        f1, f2, f3 = fc_dims
        grid = _EMBEDDING_GRID[0] * _EMBEDDING_GRID[1]
        self.embeddings = nn.Sequential(
            nn.Linear(c4 * grid, f1),
            nn.ReLU(inplace=True),
            nn.Linear(f1, f2),
            nn.ReLU(inplace=True),
            nn.Linear(f2, f3),
            nn.ReLU(inplace=True),
        )
        self.stage_channels = {"conv1": c1, "conv2": c2, "conv3": c3, "conv4": c4}
        self.frozen = freeze
        if freeze:
            for p in self.parameters():
                p.requires_grad = False
            self.eval()

    @classmethod
    def from_config(cls, cfg):
        return {
            "channels": tuple(cfg.MODEL.SELM.AUDIO.CHANNELS),
            "fc_dims": tuple(cfg.MODEL.SELM.AUDIO.FC_DIMS),
            "freeze": cfg.MODEL.SELM.AUDIO.FREEZE,
        }

    def train(self, mode=True):
        # A frozen VGGish stays in eval mode whatever its parent model does.
        return super().train(mode and not self.frozen)

    def forward_stage(self, name, x):
        """
        Run conv block ``name`` ("conv1".."conv4"); conv1 takes the log-mel [N, 1, 96, 64].

        Returns:
            Tensor [N, stage_channels[name], h/2, w/2] (conv4: [N, C4, 6, 4]).
        """
        if name not in _STAGE_SLICES:
            raise KeyError("VGGish has stages {}, not {!r}.".format(list(self.stage_names), name))
        start, end = _STAGE_SLICES[name]
        for index in range(start, end):
            x = self.features[index](x)
        return x

    def stage_modules(self, name):
        """The layers of conv block ``name``."""
        start, end = _STAGE_SLICES[name]
        return list(self.features[start:end])

    def forward_embedding(self, x):
        """[N, C4, 6, 4] conv4 output -> [N, fc_dims[-1]] embedding."""
        if tuple(x.shape[-2:]) != _EMBEDDING_GRID:
            raise ValueError(
                "VGGish embeddings take conv4 maps of size {} (from [96, 64] log-mel examples), "
                "got shape {}.".format(_EMBEDDING_GRID, tuple(x.shape))
            )
        # The weights were ported from TensorFlow, which flattens channels-last.
        x = x.permute(0, 2, 3, 1).flatten(1)
        return self.embeddings(x)

    def forward(self, x):
        """[N, 1, 96, 64] log-mel examples -> [N, fc_dims[-1]] embeddings."""
        for name in self.stage_names:
            x = self.forward_stage(name, x)
        return self.forward_embedding(x)


def load_vggish_weights(model: VGGish, path: str):
    """
    Load a torchvggish state dict (``vggish-10086976.pth``, ``MODEL.SELM.AUDIO.WEIGHTS``)
    into ``model``; every tensor of the model must be in the file.
    """
    load_checked_state_dict(
        model,
        read_weights_file(path, "MODEL.SELM.AUDIO.WEIGHTS"),
        path=path,
        config_key="MODEL.SELM.AUDIO.WEIGHTS",
        shape_hint="Pretrained VGGish weights need the default widths "
        "MODEL.SELM.AUDIO.CHANNELS [64, 128, 256, 512] and FC_DIMS [4096, 4096, 128].",
        require_all=True,
    )

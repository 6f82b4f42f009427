"""VGGish audio encoder: one 128-d embedding per 0.96 s log-mel example.

Layer layout and parameter names are those of the widely used PyTorch port
(harritaylor/torchvggish, ``vggish-10086976.pth``): ``features.<i>`` convolutions and
``embeddings.<i>`` fully connected layers, so that file loads with a plain state-dict
load. PCA post-processing is not part of the model (AVSBench does not use it).
"""
from torch import nn

from detectron2.config import configurable

from ..backbone.weights import load_checked_state_dict, read_weights_file
from ...utils import ConfigError

__all__ = ["VGGish", "load_vggish_weights"]

_EXAMPLE_SIZE = (96, 64)
# A [96, 64] log-mel example is halved by each of the 4 max-pools.
_EMBEDDING_GRID = (6, 4)


class VGGish(nn.Module):
    """
    VGGish: 4 conv blocks (widths ``channels``, each ending in a 2x2 max-pool) on
    [N, 1, 96, 64] log-mel examples, then fully connected layers ``fc_dims`` to the
    128-d embedding. Frozen (``freeze=True``, the authors' choice) it has no trainable
    parameters and stays in eval mode.
    """

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
            raise ConfigError(
                "VGGish needs 4 MODEL.SELM.AUDIO.CHANNELS and 3 MODEL.SELM.AUDIO.FC_DIMS, got {} "
                "and {}.".format(list(channels), list(fc_dims))
            )
        c1, c2, c3, c4 = channels
        # (in, out) convolutions; "M" = 2x2 max-pool closing a block.
        layout = [(1, c1), "M", (c1, c2), "M", (c2, c3), (c3, c3), "M", (c3, c4), (c4, c4), "M"]
        layers = []
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
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

    def forward(self, x):
        """[N, 1, 96, 64] log-mel examples -> [N, fc_dims[-1]] embeddings."""
        if tuple(x.shape[-2:]) != _EXAMPLE_SIZE:
            raise ValueError("VGGish takes log-mel examples of {} (frames x mel bands), got "
                             "shape {}".format(_EXAMPLE_SIZE, tuple(x.shape)))
        x = self.features(x)
        # The weights were ported from TensorFlow, which flattens channels-last.
        return self.embeddings(x.permute(0, 2, 3, 1).flatten(1))


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

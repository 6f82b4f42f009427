"""The interface SelM needs of a visual encoder: its stem and stages, callable one at a time,
so that DAM can fuse the audio into each stage's output before the next stage runs."""
from abc import abstractmethod

from detectron2.modeling import Backbone

__all__ = ["StagedBackbone"]


class StagedBackbone(Backbone):
    """A detectron2 :class:`Backbone` that runs stage by stage.

    Subclasses set ``stage_names`` (the built stages in order, ``"res2"`` ...),
    ``_out_features``, ``_out_feature_channels`` and ``_out_feature_strides`` (detectron2's
    Backbone fields) and implement :meth:`forward_stem` and :meth:`_run_stage`.
    """

    @abstractmethod
    def forward_stem(self, x):
        """[N, 3, H, W] normalised images -> the input of the first stage."""

    @abstractmethod
    def _run_stage(self, index, x):
        """Stage ``stage_names[index]`` on the previous stage's (or the stem's) output."""

    def forward_stage(self, name, x):
        """Run stage ``name`` on [N, C_prev, h, w] -> [N, stage_channels[name], h', w']."""
        if name not in self.stage_names:
            raise KeyError("{} has stages {}, not {!r}.".format(
                type(self).__name__, list(self.stage_names), name))
        return self._run_stage(self.stage_names.index(name), x)

    @property
    def stage_channels(self):
        """{stage name: channels} for every built stage (also those not in out_features)."""
        return {name: self._out_feature_channels[name] for name in self.stage_names}

    def forward(self, x):
        """
        Args:
            x: [N, C, H, W] normalised images.
        Returns:
            dict[str, Tensor]: the ``out_features`` stage outputs.
        """
        if x.dim() != 4:
            raise ValueError("{} takes [N, C, H, W] images, got shape {}.".format(
                type(self).__name__, tuple(x.shape)))
        outputs = {}
        x = self.forward_stem(x)
        for name in self.stage_names:
            x = self.forward_stage(name, x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

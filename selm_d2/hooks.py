"""Training hooks of SelM's recipes."""
import logging

from detectron2.engine import HookBase
from torch.nn.parallel import DistributedDataParallel

__all__ = ["BackboneFreeze"]

logger = logging.getLogger(__name__)


class BackboneFreeze(HookBase):
    """The visual encoder learns only from iteration ``until`` on (the authors' MS3 ResNet-50:
    frozen for 15 epochs).

    Before that, the optimizer step drops the encoder's gradients, so it sees no update, no
    weight decay and no AdamW moments, as with the authors' ``requires_grad=False``. The
    gradients are still computed: parameters keep ``requires_grad``, so that
    DistributedDataParallel, which registers them once, synchronises them after the switch.
    BatchNorm statistics keep updating, as in the authors' code.
    """

    def __init__(self, until):
        self.until = until
        self._handle = None

    def before_train(self):
        model = self.trainer.model
        if isinstance(model, DistributedDataParallel):
            model = model.module
        frozen = {id(p) for p in model.backbone.parameters()}

        def drop_gradients(optimizer, args, kwargs):
            if self.trainer.iter >= self.until:
                return
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if id(p) in frozen:
                        p.grad = None

        self._handle = self.trainer.optimizer.register_step_pre_hook(drop_gradients)
        if self.trainer.iter < self.until:
            logger.info("Visual encoder frozen until iteration %d (SOLVER.BACKBONE_FREEZE_ITERS)",
                        self.until)

    def after_step(self):
        if self.trainer.iter + 1 == self.until:
            logger.info("Visual encoder unfrozen from iteration %d on", self.until)

    def after_train(self):
        if self._handle is not None:
            self._handle.remove()

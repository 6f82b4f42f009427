"""SelM's detectron2 trainer: clip loaders, AVS evaluation, optimizer and complete resume."""
import copy
import itertools
import logging
import os
import weakref
from collections import OrderedDict

import torch
from torch.nn.parallel import DistributedDataParallel

import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import inference_on_dataset
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils.logger import setup_logger

from ..data import AVSClipDatasetMapper, check_num_classes
from ..evaluation import AVSEvaluator, model_output_request
from ..hooks import BackboneFreeze
from ..modeling.pretrained import load_pretrained_encoders
from ..utils import ConfigError

__all__ = ["Trainer", "create_ddp_model"]

logger = logging.getLogger(__name__)

_NORM_TYPES = (
    torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm,
    torch.nn.GroupNorm, torch.nn.InstanceNorm1d, torch.nn.InstanceNorm2d, torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)


class Trainer(DefaultTrainer):
    """DefaultTrainer with SelM's clip loaders, AVS evaluation, optimizer and complete resume."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__ (the same on detectron2 v0.6 and main) except for the DDP
        # wrapper: detectron2's passes device_ids=[local rank], which DDP refuses for a model on
        # CPU, so multi-process CPU training (gloo) would fail there.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model)
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        """Resume, or start from ``MODEL.WEIGHTS``, or (neither) from the pretrained encoder
        files ``MODEL.SELM.VISUAL_WEIGHTS`` / ``AUDIO.WEIGHTS``, which only this case reads."""
        if resume and self.checkpointer.has_checkpoint():
            logger.info("Resuming from %s", self.checkpointer.get_checkpoint_file())
        elif self.cfg.MODEL.WEIGHTS:
            logger.info("Initialising from MODEL.WEIGHTS %s; MODEL.SELM.VISUAL_WEIGHTS and "
                        "AUDIO.WEIGHTS are not read", self.cfg.MODEL.WEIGHTS)
        else:
            load_pretrained_encoders(_unwrap(self.model), self.cfg)
        super().resume_or_load(resume=resume)

    def build_hooks(self):
        hooks = super().build_hooks()
        if self.cfg.SOLVER.BACKBONE_FREEZE_ITERS > 0:
            # Before the checkpointer and the writers, so they see the step it shaped.
            hooks.insert(1, BackboneFreeze(self.cfg.SOLVER.BACKBONE_FREEZE_ITERS))
        return hooks

    @classmethod
    def build_train_loader(cls, cfg):
        check_num_classes(cfg, cfg.DATASETS.TRAIN)
        return build_detection_train_loader(cfg, mapper=AVSClipDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name, dicts=None):
        """Clips of ``dataset_name`` (or the given ``dicts`` of it) for evaluation, each asking
        the model for just what the evaluator scores (size, labels or probabilities)."""
        check_num_classes(cfg, [dataset_name])
        dicts = DatasetCatalog.get(dataset_name) if dicts is None else dicts
        request = model_output_request(
            MetadataCatalog.get(dataset_name).get("evaluator_type", None), cfg.TEST.AVS.EVAL_SIZE)
        return build_detection_test_loader([dict(d, **request) for d in dicts],
                                           mapper=AVSClipDatasetMapper(cfg, is_train=False),
                                           num_workers=cfg.DATALOADER.NUM_WORKERS)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None, prefix=""):
        check_num_classes(cfg, [dataset_name])
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type not in ("avs_binary", "avss"):
            raise ConfigError(
                "dataset '{}' has evaluator_type={!r}; SelM evaluates 'avs_binary' (S4/MS3-style) or "
                "'avss' datasets: set it in the dataset's Metadata (register_avs_dataset does).".format(
                    dataset_name, evaluator_type)
            )
        return AVSEvaluator(
            dataset_name,
            output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name),
            f_batch_size=cfg.TEST.AVS.F_BATCH_SIZE,
            eval_size=cfg.TEST.AVS.EVAL_SIZE,
            avss_protocol=cfg.TEST.AVS.AVSS_PROTOCOL,
            prefix=prefix,
        )

    @classmethod
    def build_optimizer(cls, cfg, model):
        """AdamW/SGD with per-module LR multipliers; norm layers get SOLVER.WEIGHT_DECAY_NORM,
        every other parameter SOLVER.WEIGHT_DECAY (the authors' AdamW: one decay for all)."""
        base_lr = cfg.SOLVER.BASE_LR
        multipliers = {"backbone.": cfg.SOLVER.BACKBONE_MULTIPLIER, "audio_encoder.": cfg.SOLVER.AUDIO_MULTIPLIER}
        # One group per (lr, weight decay): the optimizers' multi-tensor (foreach) paths then
        # update a whole group at once instead of one parameter at a time.
        groups, seen = {}, set()
        for module_name, module in model.named_modules():
            for name, value in module.named_parameters(recurse=False):
                if not value.requires_grad or value in seen:
                    continue
                seen.add(value)
                full_name = "{}.{}".format(module_name, name) if module_name else name
                lr = base_lr
                for prefix, mult in multipliers.items():
                    if full_name.startswith(prefix) or full_name.startswith("module." + prefix):
                        lr = base_lr * mult
                weight_decay = cfg.SOLVER.WEIGHT_DECAY
                if isinstance(module, _NORM_TYPES):
                    weight_decay = cfg.SOLVER.WEIGHT_DECAY_NORM
                groups.setdefault((lr, weight_decay), []).append(value)
        params = [{"params": values, "lr": lr, "weight_decay": weight_decay}
                  for (lr, weight_decay), values in groups.items()]

        optimizer_type = cfg.SOLVER.OPTIMIZER.upper()
        if optimizer_type == "ADAMW":
            optimizer_cls = torch.optim.AdamW
            kwargs = {"betas": (0.9, 0.999), "foreach": True}
        elif optimizer_type == "SGD":
            optimizer_cls = torch.optim.SGD
            kwargs = {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV,
                      "foreach": True}
        else:
            raise ConfigError("SOLVER.OPTIMIZER={!r} is not supported: use ADAMW or SGD".format(cfg.SOLVER.OPTIMIZER))

        clip = cfg.SOLVER.CLIP_GRADIENTS
        if clip.ENABLED and clip.CLIP_TYPE == "full_model":
            optimizer_cls = _full_model_clipping(optimizer_cls, clip.CLIP_VALUE)
            return optimizer_cls(params, base_lr, **kwargs)
        return maybe_add_gradient_clipping(cfg, optimizer_cls(params, base_lr, **kwargs))

    # detectron2 v0.6's DefaultTrainer saves neither the optimizer nor the AMP scaler, and
    # main's expects them under "_trainer": save them at the top level and read both layouts.
    def state_dict(self):
        ret = TrainerBase.state_dict(self)
        ret["optimizer"] = self._trainer.optimizer.state_dict()
        grad_scaler = getattr(self._trainer, "grad_scaler", None)
        if grad_scaler is not None:
            ret["grad_scaler"] = grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        TrainerBase.load_state_dict(self, state_dict)
        inner = state_dict.get("_trainer", {})
        optimizer_state = state_dict.get("optimizer", inner.get("optimizer"))
        if optimizer_state is not None:
            self._trainer.optimizer.load_state_dict(optimizer_state)
        else:
            logger.warning(
                "checkpoint has no optimizer state (written by detectron2 v0.6's DefaultTrainer?): "
                "the optimizer restarts from scratch")
        scaler_state = state_dict.get("grad_scaler", inner.get("grad_scaler"))
        grad_scaler = getattr(self._trainer, "grad_scaler", None)
        if scaler_state is not None and grad_scaler is not None:
            grad_scaler.load_state_dict(scaler_state)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Standard evaluation, plus the auditory-illusion passes when TEST.AVS.ILLUSION is on:
        the same clips with silenced audio and with another clip's audio.

        Runs under ``torch.inference_mode`` (detectron2's loop only turns gradients off):
        fewer bookkeeping steps per op, which SelM's many small ops (BCSM, CLEVER) feel.
        """
        with torch.inference_mode():
            return cls._test(cfg, model, evaluators)

    @classmethod
    def _test(cls, cfg, model, evaluators):
        results = super().test(cfg, model, evaluators)
        if not cfg.TEST.AVS.ILLUSION:
            return results
        for dataset_name in cfg.DATASETS.TEST:
            dicts = DatasetCatalog.get(dataset_name)
            for mode, altered in (("silenced", _silenced(dicts)), ("swapped", _swapped(dicts))):
                loader = cls.build_test_loader(cfg, dataset_name, altered)
                evaluator = cls.build_evaluator(cfg, dataset_name, prefix=mode)
                res = inference_on_dataset(model, loader, evaluator)
                if comm.is_main_process():
                    _merge(results, dataset_name, res, len(cfg.DATASETS.TEST))
        return results


def create_ddp_model(model):
    """DistributedDataParallel when there are several processes, on CUDA (NCCL) or CPU (gloo).

    Every trainable parameter of SelM reaches the loss, so no find_unused_parameters.
    Unlike detectron2's DefaultTrainer, buffers are broadcast from rank 0 (DDP's default): with
    BatchNorm (the AVS-Synth configs) each rank would otherwise keep running statistics of its
    own batches, and evaluation during training would score every rank's clips with other
    statistics than those of the checkpoint that rank 0 saves.
    """
    if comm.get_world_size() == 1:
        return model
    device_ids = [comm.get_local_rank()] if next(model.parameters()).is_cuda else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


def _full_model_clipping(optimizer_cls, clip_norm):
    """Clip the gradient norm of all parameters together (Mask2Former's "full_model")."""

    class FullModelGradientClippingOptimizer(optimizer_cls):
        def step(self, closure=None):
            all_params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(all_params, clip_norm)
            super().step(closure=closure)

    return FullModelGradientClippingOptimizer


def _silenced(dicts):
    out = copy.deepcopy(dicts)
    for d in out:
        d["audio_override"] = "silence"
    return out


def _swapped(dicts):
    """Give every clip the audio of the next clip (cyclic), keeping its frames and labels."""
    if len(dicts) < 2:
        logger.warning(
            "TEST.AVS.ILLUSION: swapping audio needs at least 2 clips but the dataset has %d, "
            "so the 'swapped' scores are those of the original audio.", len(dicts))
    out = copy.deepcopy(dicts)
    for d, donor in zip(out, dicts[1:] + dicts[:1]):
        d["audio_file_name"] = donor["audio_file_name"]
        d["audio_log_mel_file"] = donor.get("audio_log_mel_file")
    return out


def _merge(results, dataset_name, extra, num_datasets):
    """Put ``extra`` (an evaluator's {task: {metric: v}}) into the results of ``dataset_name``."""
    target = results[dataset_name] if num_datasets > 1 else results
    for task, metrics in extra.items():
        target.setdefault(task, OrderedDict()).update(metrics)

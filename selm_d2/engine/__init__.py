"""Training, evaluation and prediction around detectron2's engine."""
from .defaults import check_num_gpus, init_process_group_from_env, setup, started_by_torchrun
from .trainer import Trainer, create_ddp_model

__all__ = ["Trainer", "create_ddp_model", "setup", "check_num_gpus", "started_by_torchrun",
           "init_process_group_from_env"]

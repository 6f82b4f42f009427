"""Config set-up and process start for train_net.py and the tools: one place for both."""
import logging
import os

import torch
import torch.distributed as dist

import detectron2.utils.comm as comm
from detectron2.engine import default_setup
from detectron2.utils.logger import setup_logger

from ..config import load_config

__all__ = ["setup", "fall_back_to_cpu", "check_num_gpus", "started_by_torchrun",
           "init_process_group_from_env"]

logger = logging.getLogger(__name__)


def fall_back_to_cpu(cfg):
    """Without a CUDA device, run ``cfg`` (not frozen) on CPU in float32.

    Returns:
        list[str]: the changes made, for the log.
    """
    changes = []
    if not torch.cuda.is_available():
        if cfg.SOLVER.AMP.ENABLED:
            # Mixed precision is a CUDA feature here; CPU runs stay in fp32.
            cfg.SOLVER.AMP.ENABLED = False
            changes.append("SOLVER.AMP.ENABLED True -> False (AMP needs CUDA)")
        if cfg.MODEL.DEVICE != "cpu":
            changes.append("MODEL.DEVICE {} -> cpu (no CUDA device is visible)".format(
                cfg.MODEL.DEVICE))
            cfg.MODEL.DEVICE = "cpu"
    return changes


def setup(args):
    """The frozen config of ``args`` (``config_file``, ``opts``) with detectron2's default set-up
    (output folder, logs, seed); on a machine without CUDA it runs on CPU in float32."""
    cfg = load_config(args.config_file, args.opts)
    changes = fall_back_to_cpu(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="selm_d2")
    for change in changes:
        logger.warning("Changed %s", change)
    return cfg


def check_num_gpus(num_gpus):
    """``--num-gpus`` beyond the visible CUDA devices fails here, not deep inside launch."""
    available = torch.cuda.device_count()
    if num_gpus > max(available, 1):
        raise SystemExit(
            "--num-gpus {} but {} CUDA device(s) are visible. Use --num-gpus {} (CPU runs use 1, "
            "or `torchrun --nproc_per_node N train_net.py ...` for N CPU processes), or check "
            "CUDA_VISIBLE_DEVICES.".format(num_gpus, available, max(available, 1))
        )


def started_by_torchrun():
    """torchrun (or another torch.distributed launcher) started this process."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_process_group_from_env():
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*):
    NCCL on GPUs, gloo on CPU, and detectron2's per-machine group on v0.6 and main alike."""
    local_rank = int(os.environ["LOCAL_RANK"])
    local_size = int(os.environ["LOCAL_WORLD_SIZE"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", init_method="env://")
    comm.synchronize()
    if hasattr(comm, "create_local_process_group"):  # detectron2 main
        comm.create_local_process_group(local_size)
    else:  # detectron2 v0.6 keeps the group in a module attribute
        machine = dist.get_rank() // local_size
        for i in range(dist.get_world_size() // local_size):
            group = dist.new_group(list(range(i * local_size, (i + 1) * local_size)))
            if i == machine:
                comm._LOCAL_PROCESS_GROUP = group

#!/usr/bin/env python
"""SelM training and evaluation script (detectron2 DefaultTrainer + launch).

    python train_net.py --config-file configs/ms3/selm_pvt_v2_b5.yaml --num-gpus 4
    python train_net.py --config-file configs/ms3/selm_pvt_v2_b5.yaml --eval-only MODEL.WEIGHTS model.pth
    python train_net.py --config-file ... --resume      # continue from OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file ... --dataset my_train=avsbench_ms3:/data/tree:train \
        DATASETS.TRAIN "('my_train',)"                 # a dataset of your own, no Python
    torchrun --nproc_per_node 2 train_net.py --config-file ...   # any number of processes,
                                                     # also on CPU (gloo) and detectron2 v0.6
"""
import torch.multiprocessing

import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results

from selm_d2.data.datasets import register_dataset_specs
from selm_d2.utils import USER_ERROR_EXIT_CODE, exit_on_user_error
from selm_d2.engine import (
    Trainer,
    check_num_gpus,
    init_process_group_from_env,
    setup,
    started_by_torchrun,
)


def main(args):
    # Here, not at import: launch() spawns processes that call main() and need the names too.
    register_dataset_specs(args.dataset)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def main_cli(args):
    """`main` for the command line: a mistake in the config or data ends with its message."""
    with exit_on_user_error(args.verbose):
        return main(args)


def get_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--dataset", action="append", default=[], metavar="NAME=LAYOUT:ROOT[:SPLIT]",
        help="register a dataset of your own under NAME (repeatable), e.g. "
        "my_train=avsbench_ms3:/data/my_tree:train; LAYOUT is avsbench_s4, avsbench_ms3, avss "
        "or manifest (ROOT is then the manifest file). Use NAME in DATASETS.TRAIN/TEST.")
    parser.add_argument("--verbose", action="store_true",
                        help="show the traceback of config and data errors too")
    return parser


if __name__ == "__main__":
    args = get_parser().parse_args()
    print("Command Line Args:", args)
    if started_by_torchrun():
        if args.num_gpus != 1:
            raise SystemExit("Under torchrun, leave --num-gpus at 1: torchrun --nproc_per_node "
                             "sets the number of processes.")
        init_process_group_from_env()
        main_cli(args)
    else:
        check_num_gpus(args.num_gpus)
        try:
            launch(
                main_cli,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(args,),
            )
        except torch.multiprocessing.ProcessExitedException as e:
            # A worker has printed its config or data error: no traceback of the spawner.
            if e.exit_code != USER_ERROR_EXIT_CODE:
                raise
            raise SystemExit(e.exit_code) from None

"""Run under torchrun by test_distributed.py: join the process group the way train_net.py does,
then train each ablation through train_net.main() in the same processes.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_ablations.py \\
        DATA_ROOT OUTPUT_ROOT KEY=VALUE[,KEY=VALUE...] [KEY=VALUE[,KEY=VALUE...] ...]

Each argument is one ablation: one or more comma-separated config options.

One process group serves every ablation, so the start-up of torch and detectron2 is paid once.
Each ablation trains 2 iterations: DDP reports parameters that got no gradient in iteration 1
when iteration 2 starts.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import train_net  # noqa: E402


def main(data_root, output_root, ablations):
    train_net.init_process_group_from_env()
    datasets = ["--dataset", "ddp_abl_train=avsbench_ms3:{}:train".format(data_root)]
    for ablation in ablations:
        switches = [opt for kv in ablation.split(",") for opt in kv.split("=", 1)]
        args = train_net.get_parser().parse_args(
            ["--config-file", os.path.join(os.path.dirname(train_net.__file__), "configs", "synth",
                                           "ms3.yaml")] + datasets
            + ["DATASETS.TRAIN", "('ddp_abl_train',)", "DATASETS.TEST", "()",
               "INPUT.AVS.SIZE", "32", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
               "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", "100",
               "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", os.path.join(output_root, ablation)]
            + switches)
        train_net.main(args)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])

"""Run under torchrun by test_distributed.py: join the process group the way train_net.py does,
then train the AVS-Synth MS3 model (configs/synth/ms3.yaml) through train_net.main() in the same
processes, once per run given.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_train.py \\
        DATA_ROOT OUTPUT_ROOT RUN [RUN ...]

Each RUN is ``default`` (the config as it is) or one or more comma-separated config options
``KEY=VALUE[,KEY=VALUE...]``; it trains into OUTPUT_ROOT/RUN.

One process group serves every run, so the start-up of torch and detectron2 is paid once.
Each run trains 2 iterations: DDP reports parameters that got no gradient in iteration 1
when iteration 2 starts.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import train_net  # noqa: E402


def main(data_root, output_root, runs):
    train_net.init_process_group_from_env()
    datasets = ["--dataset", "ddp_run_train=avsbench_ms3:{}:train".format(data_root)]
    for run in runs:
        opts = [] if run == "default" else [
            opt for kv in run.split(",") for opt in kv.split("=", 1)]
        args = train_net.get_parser().parse_args(
            ["--config-file", os.path.join(os.path.dirname(train_net.__file__), "configs", "synth",
                                           "ms3.yaml")] + datasets
            + ["DATASETS.TRAIN", "('ddp_run_train',)", "DATASETS.TEST", "()",
               "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
               "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", "100",
               "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", os.path.join(output_root, run)]
            + opts)
        train_net.main(args)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])

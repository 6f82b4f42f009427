#!/usr/bin/env python
"""A short check of SelM on a CUDA machine: AMP training, evaluation, and the Mamba paths.

    python tools/gpu_check.py                      # on a GPU; writes output/gpu_check/gpu_check.json
    python tools/gpu_check.py --device cpu --iters 2 --clips 4   # the same steps on CPU, no AMP

1. trains the AVS-Synth recipe (configs/synth/ms3.yaml) for ``--iters`` iterations with AMP
   on generated clips, then evaluates it (M_J, M_F);
2. times BCSM's selective scan: the vectorised PyTorch scan, the step-by-step reference and,
   where mamba-ssm imports, its CUDA kernel (the timing code of tools/benchmark.py);
3. where mamba-ssm imports, checks our Mamba block against mamba-ssm's on the same weights:
   the CUDA path (impl="cuda") and mamba-ssm's own module against the PyTorch path.
"""
import argparse
import json
import os
import tempfile
import time

import torch

from benchmark import bench_scan, machine_info  # beside this script

from selm_d2 import load_config
from selm_d2.data.datasets import register_dataset_specs
from selm_d2.data.synthetic import generate
from selm_d2.engine import Trainer
from selm_d2.modeling.mamba import Mamba, _load_cuda_kernels
from selm_d2.utils import write_text_atomic

TOOLS = os.path.dirname(os.path.abspath(__file__))

SYNTH_CONFIG = os.path.join(TOOLS, "..", "configs", "synth", "ms3.yaml")
# Sequence lengths BCSM's Mamba stacks scan (one token per frame: T = 5, AVSS 10) and a long one.
MAMBA_LENGTHS = (5, 10, 1024)


def train_and_evaluate(device, iters, clips, output_dir):
    with tempfile.TemporaryDirectory() as root:
        generate(root, layouts=("ms3",), clips_per_split={"train": clips, "val": 0,
                                                          "test": max(2, clips // 2)},
                 size=64, seed=0, progress=True)
        train, test = register_dataset_specs([
            "gpu_check_train=avsbench_ms3:{}:train".format(root),
            "gpu_check_test=avsbench_ms3:{}:test".format(root)])
        cfg = load_config(SYNTH_CONFIG, [
            "MODEL.DEVICE", device, "SOLVER.AMP.ENABLED", device == "cuda",
            "DATASETS.TRAIN", (train,), "DATASETS.TEST", (test,), "SOLVER.MAX_ITER", iters,
            "SOLVER.CHECKPOINT_PERIOD", iters, "TEST.EVAL_PERIOD", 0, "SEED", 0,
            "OUTPUT_DIR", os.path.join(output_dir, "train")])
        cfg.freeze()
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        metrics = Trainer.test(cfg, trainer.model)["sem_seg"]
    return {"iterations": iters, "amp": device == "cuda", "train_s": seconds,
            "s_per_iter": seconds / iters, "metrics": metrics}


def mamba_parity(device, d_model=64):
    """Our Mamba's PyTorch path vs mamba-ssm (its kernel through impl="cuda", and its own
    module) on the same weights: max abs difference of outputs and input gradients."""
    kernels = _load_cuda_kernels()
    if device != "cuda" or kernels.error is not None:
        return {"available": False, "reason": "needs CUDA and mamba-ssm ({})".format(
            kernels.error if kernels.error is not None else "device is " + device)}
    from mamba_ssm.modules.mamba_simple import Mamba as MambaSSM

    torch.manual_seed(0)
    reference = Mamba(d_model, impl="torch").to(device)
    others = {"impl=cuda": Mamba(d_model, impl="cuda").to(device),
              "mamba_ssm.Mamba": MambaSSM(d_model).to(device)}
    rows = []
    for name, module in others.items():
        module.load_state_dict(reference.state_dict())  # the same names and shapes
        for length in MAMBA_LENGTHS:
            x = torch.randn(2, length, d_model, device=device)
            outs, grads = [], []
            for m in (reference, module):
                xi = x.clone().requires_grad_()
                y = m(xi)
                y.square().sum().backward()
                outs.append(y.detach())
                grads.append(xi.grad)
            rows.append({"against": name, "L": length,
                         "max_abs_out": (outs[0] - outs[1]).abs().max().item(),
                         "max_abs_grad": (grads[0] - grads[1]).abs().max().item(),
                         "out_scale": outs[0].abs().max().item()})
    return {"available": True, "rows": rows}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--clips", type=int, default=40, help="training clips to generate")
    parser.add_argument("--scan-lengths", type=int, nargs="+", default=list(MAMBA_LENGTHS),
                        help="sequence lengths at which to time the selective scan")
    parser.add_argument("--output-dir", default="output/gpu_check")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("No CUDA device is visible: this check is for GPU machines. "
                         "`--device cpu` runs the same steps without AMP.")
    os.makedirs(args.output_dir, exist_ok=True)
    report = {"machine": machine_info(args.device),
              "training": train_and_evaluate(args.device, args.iters, args.clips, args.output_dir),
              "scan": [bench_scan(args.device, repeats=3, length=length)
                       for length in args.scan_lengths],
              "mamba_parity": mamba_parity(args.device)}
    path = os.path.join(args.output_dir, "gpu_check.json")
    write_text_atomic(path, json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print("wrote", path)
    return report


if __name__ == "__main__":
    main()

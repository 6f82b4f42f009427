#!/usr/bin/env python
"""Speed and memory of SelM on whatever device this runs on.

    python tools/benchmark.py                                  # every section, CPU or CUDA
    python tools/benchmark.py --sections latency scan --repeats 5
    python tools/benchmark.py --quick                          # every section, tiny: a check

Writes ``benchmark.json`` (all numbers + the machine), ``benchmark.md`` (the README table)
and ``scaling.png`` (latency vs frames per clip) into ``--output-dir``. Sections:

- latency: one clip (T=5 at the config's INPUT.AVS.SIZE, 448² for MS3) through SelM, through
  its visual backbone alone, and through its two encoders alone (backbone + VGGish), for the
  R50 and PVT-v2-b5 MS3 configs;
- scaling: SelM-R50 (224², configs/s4/selm_R50.yaml) latency at T = 5, 10, 20, 40 and at
  160², 224², 320² (one model per size: CLEVER's position embeddings follow the input size);
- breakdown: SelM-R50 (224²) time per part (visual encoder, VGGish, DAM per stage, the 1x1
  projections, BCSM, CLEVER, the rest) at T = 5 and 40, from forward hooks on the model's own
  modules, as a table and ``breakdown.png``;
- train: one training step (forward + backward + AdamW) of SelM-R50 (224²) and of the
  AVS-Synth model;
- scan: BCSM's selective scan, vectorised vs step-by-step, fwd + bwd (and mamba-ssm on CUDA);
- conv3x3: CLEVER's 3x3 convolutions at CPU inference, oneDNN's against NNPACK's, at the sizes
  of the released models (selm_d2/modeling/fast_conv.py uses NNPACK from MIN_PIXELS up);
- data: clip loading throughput (5 frames 224², wav decoding + log-mel) with 0, 1, 2 workers;
- flops: parameters and FLOPs (torch's FlopCounterMode) of one clip through the MS3 configs;
- avss_memory: peak memory above the model's own footprint of one 10-frame 1280x720 clip
  through the R50 AVSS config in eval, for each output a caller can ask for (full-size
  probabilities, per-pixel labels, the evaluator's request at TEST.AVS.EVAL_SIZE), each in a
  fresh process;
- official (only when ``--sections`` names it): SelM-D2 against the SelM authors' own code
  (../shared/reference/selm_official, loaded by selm_d2/official_code.py) for each of their six
  released models (``--official-models s4:R50 ms3:PVT ...``), with the same weights
  (``selm_d2.official.convert_official``) on the same clip at the task's input size and frame
  count: inference per clip (SelM-D2's whole ``model([clip])`` vs their VGGish + model), one
  training step (forward + loss + backward, no optimizer step) and the peak memory of each,
  timed interleaved over ``--repeats`` rounds after a warm-up round; ``--amp [bf16|fp16]`` runs
  both under torch.autocast. Its table prints the targets: inference ratio <= 0.8, training
  step ratio <= 1.0, SelM-D2's peak memory <= theirs. On CPU an MS3 PVT clip takes tens of
  seconds per call.

``--quick`` runs every section on the AVS-Synth configs (configs/synth/) with few frames,
small sizes and one repeat: it checks that the script works in about a minute on a CPU; its
numbers say nothing about the paper models.

Latencies and scaling series are timed interleaved: one call of each side per round. A ratio
is the median over rounds of that round's ratio, with its quartiles, so that a slow spell of a
shared machine lands on both sides of it (``--latency-rounds``, default 15). Inference is
timed under ``torch.inference_mode``, as the demo's predictor and ``Trainer.test`` run it.
Peak memory: CUDA max allocated on GPU; on CPU the process's peak RSS after each section.
"""
import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import statistics
import tempfile
import time
import unittest.mock

import torch
import tqdm

from detectron2.modeling import build_model

from selm_d2 import load_config
from selm_d2.engine import Trainer
from selm_d2.modeling import fast_conv
from selm_d2.modeling.mamba import selective_scan, selective_scan_ref
from selm_d2.official import OFFICIAL_CONFIGS
from selm_d2.official_pair import OfficialPair
from selm_d2.utils import atomic_path, cpu_allocation_peak_mb, write_text_atomic

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PAPER_CONFIGS = {"R50": "configs/ms3/selm_R50.yaml", "PVT-v2-b5": "configs/ms3/selm_pvt_v2_b5.yaml"}
# SelM-R50 at 224² (the S4 config; MS3's R50 runs at 448²) for scaling, breakdown and train.
R50_CONFIG = "configs/s4/selm_R50.yaml"
AVSS_CONFIG = "configs/avss/selm_R50.yaml"
SYNTH_CONFIG = "configs/synth/ms3.yaml"
SYNTH_AVSS_CONFIG = "configs/synth/avss.yaml"
SECTIONS = ("latency", "scaling", "breakdown", "train", "scan", "conv3x3", "data", "flops",
            "avss_memory")
# Sections that run only when --sections names them.
OPTIONAL_SECTIONS = ("official",)
# What each section measures, by default and with --quick (the AVS-Synth models, tiny inputs).
DEFAULT_PLAN = {
    "paper_configs": PAPER_CONFIGS, "r50_config": R50_CONFIG, "avss_config": AVSS_CONFIG,
    "train_configs": {"SelM-R50 (224², T=5)": (R50_CONFIG, 4),
                      "SelM AVS-Synth (configs/synth/ms3.yaml)": (SYNTH_CONFIG, None)},
    "scaling_frames": (5, 10, 20, 40), "scaling_sizes": (160, 224, 320),
    "breakdown_frames": (5, 40), "scan_length": 1024, "data_clips": 48, "data_size": 224,
    "data_workers": (0, 1, 2), "avss_output_size": (720, 1280),
    # (input channels, side): CLEVER's Fusion (2 x 256 in) and projector (256) at the sizes
    # of the released models.
    "conv3x3_shapes": ((512, 28), (512, 56), (512, 112), (256, 112), (256, 224)),
    "conv3x3_frames": 5,
}
QUICK_PLAN = {
    "paper_configs": {"AVS-Synth": SYNTH_CONFIG}, "r50_config": SYNTH_CONFIG,
    "avss_config": SYNTH_AVSS_CONFIG,
    "train_configs": {"SelM AVS-Synth (configs/synth/ms3.yaml)": (SYNTH_CONFIG, 2)},
    "scaling_frames": (2, 4), "scaling_sizes": (64, 96), "breakdown_frames": (2,),
    "scan_length": 64, "data_clips": 4, "data_size": 64, "data_workers": (0, 1),
    "avss_output_size": (72, 128), "conv3x3_shapes": ((64, 16), (32, 96)), "conv3x3_frames": 2,
}
# What a caller can ask SelM to return (keys of the input clip dict), for avss_memory; the
# evaluator's request is asked of the evaluator itself.
AVSS_OUTPUT_REQUESTS = {
    "probabilities at {w}x{h} (default)": {},
    "labels at {w}x{h} (demo)": {"output_format": "labels"},
}


def size_opts(size):
    """Config options that run a model at ``size``² input: INPUT.AVS.SIZE and CLEVER's
    position embeddings, one per layer at size / 16, / 8, / 4 (their sides are fixed by the
    input size, so another size is another model)."""
    return ["INPUT.AVS.SIZE", size,
            "MODEL.SELM.CLEVER.POS_EMBED_SIZES", [size // 16, size // 8, size // 4]]


def load_cfg(path, device, opts=()):
    cfg = load_config(os.path.join(REPO, path))
    # No pretrained files are needed to time a network: random weights cost the same.
    cfg.MODEL.SELM.VISUAL_WEIGHTS = ""
    cfg.MODEL.SELM.AUDIO.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


def build_seeded(cfg):
    """``build_model`` with a fixed seed, so that every run and every model of a run times the
    same weights and inputs (values can change CPU time, e.g. through denormal numbers)."""
    torch.manual_seed(0)
    return build_model(cfg)


def clip_input(num_frames, size, num_classes=1, train=False):
    """One mapper-style clip dict of random content."""
    clip = {
        "image": torch.randint(0, 256, (num_frames, 3, size, size), dtype=torch.uint8),
        "audio": torch.randn(num_frames, 1, 96, 64),
        "frame_valid": torch.ones(num_frames, dtype=torch.bool),
        "height": size, "width": size, "clip_id": "bench",
    }
    if train:
        clip["sem_seg"] = torch.randint(0, num_classes + 1, (num_frames, size, size))
        clip["frame_mask_flags"] = torch.ones(num_frames, dtype=torch.bool)
    return clip


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_rounds(fns, device, repeats, warmup=1, progress=None, alternate=False):
    """{name: [seconds per round]} of each ``fns[name]()``, timed round-robin (one call of each
    per round) so that machine noise lands on every side of a ratio rather than on one block.

    ``progress``: a tqdm description to show the rounds under (none by default).
    ``alternate``: every second round calls the functions in reverse order, so that no side
    always runs right after the same other one (whose leftovers, caches or allocator state it
    would otherwise always inherit)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    rounds = range(repeats)
    if progress is not None:
        rounds = tqdm.tqdm(rounds, desc=progress, unit="round", leave=False)
    for index in rounds:
        order = list(fns.items())
        if alternate and index % 2:
            order.reverse()
        for name, fn in order:
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def interleaved(fns, device, repeats, warmup=1):
    """{name: median seconds} of each ``fns[name]()``, timed as ``interleaved_rounds``."""
    return {name: statistics.median(values)
            for name, values in interleaved_rounds(fns, device, repeats, warmup).items()}


def paired_ratio(numerators, denominators):
    """Median and quartiles over rounds of numerator / denominator of the same round."""
    ratios = [a / b for a, b in zip(numerators, denominators)]
    if len(ratios) == 1:  # statistics.quantiles needs two points (Python < 3.13)
        return {"median": ratios[0], "q1": ratios[0], "q3": ratios[0]}
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return {"median": median, "q1": q1, "q3": q3}


def timeit(fn, device, repeats, warmup=1):
    """Median wall time of ``fn()`` in seconds."""
    return interleaved({"fn": fn}, device, repeats, warmup)["fn"]


def peak_memory_mb(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _encoders_alone(model, images, audio):
    """The visual backbone and VGGish on the same input, without DAM/BCSM/CLEVER."""
    model.backbone(images)
    model.audio_encoder(audio)


def bench_latency(device, repeats, configs=PAPER_CONFIGS):
    rows = []
    for name, path in configs.items():
        cfg = load_cfg(path, device)
        model = build_seeded(cfg).eval()
        clip = clip_input(cfg.INPUT.AVS.NUM_FRAMES, cfg.INPUT.AVS.SIZE)
        images = ((clip["image"].float() - model.pixel_mean.cpu()) / model.pixel_std.cpu()).to(device)
        audio = clip["audio"].to(device)
        with torch.inference_mode():
            times = interleaved_rounds({"selm": lambda: model([clip]),
                                        "backbone": lambda: model.backbone(images),
                                        "encoders": lambda: _encoders_alone(model, images, audio)},
                                       device, repeats)
        selm, backbone, encoders = (statistics.median(times[k])
                                    for k in ("selm", "backbone", "encoders"))
        rows.append({"backbone": name, "T": cfg.INPUT.AVS.NUM_FRAMES, "size": cfg.INPUT.AVS.SIZE,
                     "rounds": repeats, "selm_s": selm,
                     "backbone_alone_s": backbone, "encoders_alone_s": encoders,
                     "selm_over_backbone": paired_ratio(times["selm"], times["backbone"]),
                     "selm_over_encoders": paired_ratio(times["selm"], times["encoders"]),
                     "clips_per_s": 1.0 / selm})
    return rows


def bench_scaling(device, repeats, config=R50_CONFIG, frames=(5, 10, 20, 40),
                  sizes=(160, 224, 320)):
    """SelM latency over T (at the config's size) and over frame size (T=5, one model per
    size), each series timed interleaved."""
    cfg = load_cfg(config, device)
    models = {size: build_seeded(load_cfg(config, device, size_opts(size))).eval()
              for size in sizes}
    if cfg.INPUT.AVS.SIZE not in models:
        models[cfg.INPUT.AVS.SIZE] = build_seeded(cfg).eval()

    def series(shapes):
        clips = {shape: clip_input(*shape) for shape in shapes}
        with torch.inference_mode():
            return interleaved({shape: (lambda c=clip, m=models[shape[1]]: m([c]))
                                for shape, clip in clips.items()}, device, repeats)

    by_frames = series([(t, cfg.INPUT.AVS.SIZE) for t in frames])
    by_size = series([(cfg.INPUT.AVS.NUM_FRAMES, size) for size in sizes])
    return {"frames": [{"T": t, "size": s, "latency_s": v} for (t, s), v in by_frames.items()],
            "resolution": [{"T": t, "size": s, "latency_s": v} for (t, s), v in by_size.items()]}


# Parts of SelM in the time breakdown: a module path (in ``SelM``) and the part its module and
# everything inside it belong to. DAM gets one part per stage ("DAM res2", ...). What runs
# outside these modules is "other": normalisation, padding masks, post-processing.
BREAKDOWN_PARTS = (("backbone", "visual encoder"), ("audio_encoder", "VGGish"),
                   ("audio_proj", "projections"), ("dam", "DAM"),
                   ("sem_seg_head.in_proj", "projections"), ("sem_seg_head.bcsm", "BCSM"),
                   ("sem_seg_head.clever", "CLEVER"))


def breakdown_part(path):
    """The part of the module at ``path`` (``BREAKDOWN_PARTS``), or None."""
    for prefix, label in BREAKDOWN_PARTS:
        if path == prefix or path.startswith(prefix + "."):
            if prefix == "dam":  # one part per stage; the ModuleDict itself never runs
                stage = path[len(prefix) + 1:].split(".")[0]
                return "DAM " + stage if stage else None
            return label
    return None


class ModuleTimer:
    """Time spent in each part of a model (``BREAKDOWN_PARTS``), from forward hooks.

    Every module of a part is hooked (the model calls some of them through methods, e.g. the
    backbone's ``forward_stage``, not through the part's own ``forward``); only the outermost
    call in progress is timed, so nested modules are not counted twice.

    Args:
        clock: seconds, ``time.perf_counter`` unless a test gives another.
    """

    def __init__(self, model, device, clock=time.perf_counter):
        self.device = device
        self.clock = clock
        self.seconds = {}
        self._depth, self._start, self._part = 0, 0.0, None
        self._handles = []
        for path, module in model.named_modules():
            part = breakdown_part(path)
            if part is not None:
                self._handles.append(module.register_forward_pre_hook(self._enter(part)))
                self._handles.append(module.register_forward_hook(self._leave))

    def remove(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _enter(self, part):
        def hook(module, inputs):
            if self._depth == 0:
                _sync(self.device)
                self._start, self._part = self.clock(), part
            self._depth += 1
        return hook

    def _leave(self, module, inputs, output):
        self._depth -= 1
        if self._depth == 0:
            _sync(self.device)
            self.seconds[self._part] = (self.seconds.get(self._part, 0.0)
                                        + self.clock() - self._start)


def time_parts(model, clip, device, repeats, clock=time.perf_counter):
    """{part: median seconds over ``repeats`` calls of ``model([clip])``} after one warm-up
    call, with "other" (what no part covers) and "total"; parts + other = total."""
    timer = ModuleTimer(model, device, clock)
    runs = []
    try:
        with torch.inference_mode():
            model([clip])  # warm-up
            for _ in range(repeats):
                timer.seconds = {}
                _sync(device)
                start = clock()
                model([clip])
                _sync(device)
                total = clock() - start
                runs.append(dict(timer.seconds, other=total - sum(timer.seconds.values()),
                                 total=total))
    finally:
        timer.remove()
    return {part: statistics.median(r[part] for r in runs) for part in runs[0]}


def bench_breakdown(device, repeats, frames=(5, 40), config=R50_CONFIG):
    """Per-part time of one SelM clip (at the config's size) at each T of ``frames``."""
    cfg = load_cfg(config, device)
    model = build_seeded(cfg).eval()
    return [{"T": t, "size": cfg.INPUT.AVS.SIZE,
             "seconds": time_parts(model, clip_input(t, cfg.INPUT.AVS.SIZE), device, repeats)}
            for t in frames]


def _train_step_time(cfg, device, repeats, batch):
    model = build_seeded(cfg).train()
    optimizer = Trainer.build_optimizer(cfg, model)  # what train_net.py steps with
    clips = [clip_input(cfg.INPUT.AVS.NUM_FRAMES, cfg.INPUT.AVS.SIZE, cfg.MODEL.SELM.NUM_CLASSES, train=True)
             for _ in range(batch)]

    def step():
        losses = model(clips)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    seconds = timeit(step, device, repeats)
    return {"batch_clips": batch, "step_s": seconds, "clips_per_s": batch / seconds}


def bench_train(device, repeats, configs=DEFAULT_PLAN["train_configs"]):
    """One training step per ``configs`` entry, {name: (config, clips per batch or None for
    the config's SOLVER.IMS_PER_BATCH)}."""
    results = {}
    for name, (path, batch) in configs.items():
        cfg = load_cfg(path, device)
        results[name] = _train_step_time(cfg, device, repeats, batch or cfg.SOLVER.IMS_PER_BATCH)
    return results


def bench_scan(device, repeats, length=1024, d_inner=256, d_state=16):
    g = torch.Generator().manual_seed(0)

    def inputs():
        u = torch.randn(1, d_inner, length, generator=g)
        delta = torch.rand(1, d_inner, length, generator=g) * 0.1
        A = -torch.rand(d_inner, d_state, generator=g)
        B = torch.randn(1, d_state, length, generator=g)
        C = torch.randn(1, d_state, length, generator=g)
        D = torch.randn(d_inner, generator=g)
        z = torch.randn(1, d_inner, length, generator=g)
        return [x.to(device).requires_grad_() for x in (u, delta, A, B, C, D, z)]

    def fwd_bwd(fn):
        args = inputs()

        def run():
            out = fn(*args[:6], z=args[6], delta_softplus=True)
            out.sum().backward()

        return run

    result = {"L": length, "d_inner": d_inner, "d_state": d_state,
              "vectorised_s": timeit(fwd_bwd(selective_scan), device, repeats),
              "sequential_s": timeit(fwd_bwd(selective_scan_ref), device, max(1, repeats // 2))}
    result["speedup"] = result["sequential_s"] / result["vectorised_s"]
    if device == "cuda":
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        except ImportError:
            result["mamba_ssm_s"] = None
        else:
            result["mamba_ssm_s"] = timeit(fwd_bwd(selective_scan_fn), device, repeats)
    return result


def bench_conv3x3(device, repeats, shapes, frames):
    """CLEVER's 3x3 convolutions (C_in -> 256, padding 1) at CPU inference: oneDNN's
    (``nn.Conv2d``) against NNPACK's (``fast_conv.conv_inference``, here at every size),
    interleaved. Each row also says whether SelM-D2 uses NNPACK at that size
    (``fast_conv.MIN_PIXELS``). Empty on CUDA, where the path does not apply."""
    if torch.device(device).type != "cpu":
        return []
    rows = []
    for channels, side in tqdm.tqdm(shapes, desc="conv3x3", unit="size", leave=False):
        conv = torch.nn.Conv2d(channels, 256, 3, padding=1)
        x = torch.randn(frames, channels, side, side)
        with torch.inference_mode():
            uses = fast_conv.nnpack_applies(conv, x)
        with torch.inference_mode(), unittest.mock.patch.object(fast_conv, "MIN_PIXELS", 0):
            times = interleaved_rounds({"onednn": lambda: conv(x),
                                        "nnpack": lambda: fast_conv.conv_inference(conv, x)},
                                       device, repeats, alternate=True)
        rows.append({"C_in": channels, "C_out": 256, "T": frames, "size": side,
                     "onednn_s": statistics.median(times["onednn"]),
                     "nnpack_s": statistics.median(times["nnpack"]),
                     "nnpack_over_onednn": paired_ratio(times["nnpack"], times["onednn"]),
                     "selm_d2_uses_nnpack": uses})
    # spawn: NNPACK's workspace is kept per thread at its largest, so each needs a new process.
    context = multiprocessing.get_context("spawn")
    for row in rows:
        with context.Pool(1) as pool:
            row["nnpack_workspace_mb"] = pool.apply(_nnpack_workspace_mb, (row["C_in"], row["size"]))
    return rows


def _nnpack_workspace_mb(channels, side):
    """In a fresh process: MB that NNPACK's first call on one band of a [1, channels, side,
    side] map adds to the process (RSS growth minus the call's output), which PyTorch's
    allocator does not see: its workspace, kept for the thread's lifetime."""
    rows = min(side, fast_conv.band_rows(side))
    band = torch.randn(1, channels, rows + 2, side)
    weight = torch.randn(256, channels, 3, 3)
    if not torch.backends.nnpack.is_available():  # also initialises NNPACK
        return None
    before = _proc_status_mb("VmRSS")
    out = torch._nnpack_spatial_convolution(band, weight, None, [0, 1])
    return _proc_status_mb("VmRSS") - before - out.numel() * out.element_size() / 2**20


def bench_data(clips=48, size=224, workers=(0, 1, 2)):
    """Loading throughput of the real loader + mapper on generated S4-layout clips."""
    from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader

    from selm_d2.data import AVSClipDatasetMapper, register_avs_dataset
    from selm_d2.data.synthetic import generate

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, layouts=("s4",), clips_per_split={"train": clips, "val": 0, "test": 0},
                 size=size, seed=0, progress=False)
        name = "_benchmark_s4_{}".format(os.getpid())
        if name in DatasetCatalog.list():  # a second run in the same process
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_avs_dataset(name, tmp, "avsbench_s4", split="train")
        cfg = load_cfg(SYNTH_CONFIG, "cpu", ["INPUT.AVS.SIZE", size, "INPUT.AVS.AUDIO.SOURCE", "wav"])
        dicts = DatasetCatalog.get(name)
        mapper = AVSClipDatasetMapper(cfg, is_train=True)
        for n in workers:
            loader = build_detection_test_loader(dicts, mapper=mapper, num_workers=n)
            start = time.perf_counter()
            count = sum(1 for _ in loader)
            results.append({"workers": n, "size": size,
                            "clips_per_s": count / (time.perf_counter() - start)})
    return results


def bench_flops(device, configs=PAPER_CONFIGS):
    """Parameters and FLOPs of one clip (at the config's size). torch's dispatch-level
    FlopCounterMode, not fvcore's jit tracer: tracing cannot enter the Mamba scan's custom
    autograd Function."""
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    for name, path in configs.items():
        cfg = load_cfg(path, device)
        model = build_seeded(cfg).eval()
        clip = clip_input(cfg.INPUT.AVS.NUM_FRAMES, cfg.INPUT.AVS.SIZE)
        counter = FlopCounterMode(display=False)
        # Not under no_grad: FlopCounterMode's module tracker hooks autograd.
        with counter:
            model([clip])
        rows.append({"backbone": name, "T": cfg.INPUT.AVS.NUM_FRAMES, "size": cfg.INPUT.AVS.SIZE,
                     "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                     "backbone_params_M": sum(p.numel() for p in model.backbone.parameters()) / 1e6,
                     "gflops_per_clip": counter.get_total_flops() / 1e9})
    return rows


def _proc_status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no {} in /proc/self/status".format(field))


def _avss_clip_peak(device, request, config=AVSS_CONFIG, output_size=(720, 1280)):
    """In a fresh process: (model footprint MB, peak MB above it) of one eval pass."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = load_cfg(config, device)
    model = build_seeded(cfg).eval()
    height, width = output_size
    clip = dict(clip_input(cfg.INPUT.AVS.NUM_FRAMES, cfg.INPUT.AVS.SIZE), height=height,
                width=width, **request)
    if device == "cuda":
        torch.cuda.synchronize()
        footprint = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    else:
        footprint = _proc_status_mb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    with torch.inference_mode():
        model([clip])
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _proc_status_mb("VmHWM")
    return footprint, peak - footprint


def bench_avss_memory(device, config=AVSS_CONFIG, output_size=(720, 1280)):
    """Peak memory of one 10-frame AVSS clip (R50, 71 classes) at ``output_size`` (height,
    width; 1280x720) per output request."""
    from selm_d2.evaluation import model_output_request

    cfg = load_cfg(config, device)
    eval_size = cfg.TEST.AVS.EVAL_SIZE
    height, width = output_size
    requests = {name.format(w=width, h=height): request
                for name, request in AVSS_OUTPUT_REQUESTS.items()}
    requests["evaluator at EVAL_SIZE {}".format(eval_size)] = model_output_request("avss", eval_size)
    rows = []
    # spawn: each measurement starts from a process that has never held a clip.
    context = multiprocessing.get_context("spawn")
    for name, request in tqdm.tqdm(requests.items(), desc="avss memory", leave=False):
        with context.Pool(1) as pool:
            footprint, above = pool.apply(_avss_clip_peak, (device, request, config, output_size))
        rows.append({"output": name, "request": request, "T": cfg.INPUT.AVS.NUM_FRAMES,
                     "height": height, "width": width, "classes": cfg.MODEL.SELM.NUM_CLASSES + 1,
                     "model_footprint_mb": footprint, "peak_above_model_mb": above})
    return rows


# --------------------------------------------------------------------------- official

# The six released models of the SelM authors, (task, backbone), in the order of the table.
OFFICIAL_MODELS = tuple(OFFICIAL_CONFIGS)
# Targets that the official section prints next to its numbers.
OFFICIAL_TARGETS = {"inference": 0.8, "train_step": 1.0}
# Both pipelines resize their masks to 224 x 224: the authors' S4 / MS3 forward hard-codes
# 224, their AVSS forward resizes to its (224²) input; SelM-D2 is asked for 224 x 224.
OFFICIAL_OUTPUT_SIZE = 224
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def official_model(text):
    """argparse type of --official-models: "task:backbone" -> (task, backbone)."""
    task, _, backbone = text.partition(":")
    key = (task.strip().lower(), {"r50": "R50", "pvt": "PVT"}.get(backbone.strip().lower()))
    if key not in OFFICIAL_MODELS:
        raise argparse.ArgumentTypeError("{!r} is not one of {}".format(
            text, " ".join("{}:{}".format(*m) for m in OFFICIAL_MODELS)))
    return key


def _require_official():
    """Load the authors' code and mamba-ssm's reference Mamba; exit with a message when either
    is missing."""
    from selm_d2 import official_code

    try:
        official_code.require_official()
        official_code.load_mamba()
    except official_code.OfficialCodeMissing as exc:
        raise SystemExit("--sections official compares SelM-D2 with the SelM authors' code: "
                         "{}".format(exc)) from None


def _copy_torch_placing_on(device):
    """A copy of the ``torch`` module whose ``ones`` / ``zeros`` / ``tensor`` put a tensor made
    without a device, or on the CPU, on ``device``."""
    shim = type(torch)("torch")
    shim.__dict__.update(torch.__dict__)

    def on_device(fn):
        def make(*args, **kwargs):
            if kwargs.get("device") is None or torch.device(kwargs["device"]).type == "cpu":
                kwargs["device"] = device
            return fn(*args, **kwargs)
        return make

    for name in ("ones", "zeros", "tensor"):
        setattr(shim, name, on_device(getattr(torch, name)))
    return shim


class _OfficialOnDevice:
    """While active, the authors' modules that make tensors on a hard-coded device make them on
    ``device``. Their code puts two tensors on CUDA itself (the audio mask in SelM.py, the
    first-frame indices in S4's loss.py); selm_d2/official_code.py rewrites that to the CPU. On CUDA
    those two modules get a ``torch`` whose factories place on the device again, as the
    authors' own code does; nothing else changes (no per-op hook, so no cost). Restored on
    exit: the modules are cached for the whole process."""

    def __init__(self, modules, device):
        self.modules = [m for m in modules if getattr(m, "torch", None) is torch]
        self.device = device

    def __enter__(self):
        if torch.device(self.device).type != "cpu":
            shim = _copy_torch_placing_on(self.device)
            for module in self.modules:
                module.torch = shim
        return self

    def __exit__(self, *exc):
        for module in self.modules:
            module.torch = torch
        return False


def _official_mamba_blocks(ref, device):
    """On CUDA with mamba-ssm installed, the authors' BCSM gets mamba-ssm's own ``Mamba`` (what
    their code builds there; fused path when causal-conv1d is installed too) with the same
    weights; otherwise it keeps selm_d2/official_code.py's reference Mamba (pure PyTorch, step-by-step
    scan), which runs on any device. -> a description of what it runs."""
    reference = "mamba-ssm's Mamba, pure-PyTorch path (selective_scan_ref), from selm_d2/official_code.py"
    if torch.device(device).type != "cuda":
        return reference
    try:
        import mamba_ssm
        from mamba_ssm import Mamba
    except ImportError:
        return reference
    import importlib.util

    fast = importlib.util.find_spec("causal_conv1d") is not None  # the fused path needs it
    for module in ref.modules():
        block = getattr(module, "mamba_block", None)
        if block is not None and not isinstance(block, Mamba):
            swapped = Mamba(d_model=block.d_model, d_state=block.d_state, d_conv=block.d_conv,
                            expand=block.expand, use_fast_path=fast).to(device)
            swapped.load_state_dict(block.state_dict())
            swapped.train(block.training)
            module.mamba_block = swapped
    return "mamba-ssm {} Mamba on CUDA ({})".format(
        getattr(mamba_ssm, "__version__", "?"),
        "fused path" if fast else "selective_scan_fn, no causal-conv1d")


def _nbytes_mb(*modules):
    return sum(t.numel() * t.element_size() for m in modules
               for t in list(m.parameters()) + list(m.buffers())) / 2**20


class _RssSampler:
    """Peak RSS above the RSS at the start, sampled from /proc/self/statm every ``interval``
    seconds by a thread: the fallback where the profiler gives no allocation events."""

    def __init__(self, interval=0.005):
        import threading

        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        return False

    @property
    def above_start_mb(self):
        return (self.peak - self.start) / 2**20


def _call_peak_mb(fn, device):
    """(peak memory MB that one ``fn()`` call adds to what was allocated before it, method)."""
    import gc

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20, "cuda_max_allocated"
    peak = cpu_allocation_peak_mb(fn)
    if peak is not None:
        return peak, "cpu_profiler_allocations"
    with _RssSampler() as sampler:
        fn()
    return sampler.above_start_mb, "rss_sampled_5ms"


MEMORY_METHODS = {
    "cuda_max_allocated": "torch.cuda.max_memory_allocated during the call minus "
                          "memory_allocated before it (peak stats reset before the call)",
    "cpu_profiler_allocations": "peak of the CPU tensor memory allocated during the call above "
                                "what was allocated before it, from torch.profiler's allocation "
                                "events (profile_memory=True; a separate, untimed call)",
    "rss_sampled_5ms": "peak RSS above the RSS before the call, sampled from /proc/self/statm "
                       "every 5 ms (a separate, untimed call)",
}


class _OfficialPair(OfficialPair):
    """:class:`OfficialPair` on ``device`` with one clip of random content at the task's input
    size and frame count, and the four calls the official section times."""

    def __init__(self, task, backbone, device, seed=0):
        super().__init__(task, backbone, opts=["MODEL.DEVICE", device], seed=seed)
        self.device = device
        # Their ResNet-50 is built frozen (MS3 trains it frozen for its first epochs);
        # SelM-D2 freezes only through the BACKBONE_FREEZE_ITERS hook of train_net.py: both
        # train every parameter but VGGish's here.
        self.ref.freeze(False)
        self.ref.to(device)
        self.vggish.to(device).eval()  # their training loop runs VGGish in eval, under no_grad
        self.mamba = _official_mamba_blocks(self.ref, device)
        self.size = self.cfg.INPUT.AVS.SIZE
        unannotated = range(1, self.num_frames) if task == "s4" else ()  # S4 training clips
        data = self.random_clip(seed + 2, unannotated=unannotated,
                                output_size=OFFICIAL_OUTPUT_SIZE)
        self.clip, self.frames = data["clip"], data["frames"]
        self.target, self.target_flags = data["target"], data["target_flags"]

    def _autocast(self, amp):
        if amp is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=AMP_DTYPES[amp])

    def _reference(self, frames, audio, valid, amp):
        """Their pipeline, whose forward ends with its resize to 224 x 224."""
        return self.run_reference(frames, audio, valid, autocast=lambda: self._autocast(amp))

    def _inputs(self):
        """The authors' loop moves each batch from the loader to the GPU (``.cuda()``);
        SelM-D2's call moves its clip itself. A no-op on the CPU."""
        return (self.frames.to(self.device), self.clip["audio"].to(self.device),
                self.clip["frame_valid"].to(self.device))

    def calls(self, amp=None):
        """{name: fn}: one inference call and one training step (forward + loss + backward,
        no optimizer step) of each side; each puts its model in its mode first."""
        model, ref = self.model, self.ref

        def selm_d2_inference():
            model.eval()
            with torch.inference_mode(), self._autocast(amp):
                model([self.clip])

        def official_inference():
            ref.eval()
            with torch.no_grad():
                self._reference(*self._inputs(), amp)

        def selm_d2_train_step():
            model.train()
            model.zero_grad(set_to_none=True)
            with self._autocast(amp):
                losses = model([self.clip])
            sum(losses.values()).backward()

        def official_train_step():
            ref.train()
            ref.zero_grad(set_to_none=True)
            output, _, maps = self._reference(*self._inputs(), amp)
            # Their loss in float32, outside autocast: their S4 loss calls nn.BCELoss, which
            # autocast refuses; their S4 / MS3 loops run without AMP, their AVSS loop with it.
            total = self.reference_loss(output.float(), [m.float() for m in maps],
                                        self.target.to(self.device),
                                        self.target_flags.to(self.device))
            total.backward()

        return {"selm_d2_inference": selm_d2_inference, "official_inference": official_inference,
                "selm_d2_train_step": selm_d2_train_step,
                "official_train_step": official_train_step}

    def clear_grads(self):
        self.model.zero_grad(set_to_none=True)
        self.ref.zero_grad(set_to_none=True)


def _official_side_by_side(times, part, target):
    ours, theirs = times["selm_d2_" + part], times["official_" + part]
    ratio = paired_ratio(ours, theirs)
    return {"selm_d2_ms": 1000 * statistics.median(ours),
            "official_ms": 1000 * statistics.median(theirs),
            "ratio": ratio, "target_ratio": target, "target_met": ratio["median"] <= target,
            "selm_d2_ms_rounds": [1000 * s for s in ours],
            "official_ms_rounds": [1000 * s for s in theirs]}


def bench_official_pair(task, backbone, device, repeats, amp=None):
    pair = _OfficialPair(task, backbone, device)
    calls = pair.calls(amp)
    with _OfficialOnDevice([pair.mods.SelM, pair.mods.loss], device):
        # Warm-up round, then ``repeats`` rounds, each one call of the four in turn (the order
        # reversed every second round).
        times = interleaved_rounds(calls, device, repeats, warmup=1, alternate=True,
                                   progress="{}:{} rounds".format(task, backbone))
        memory, methods = {}, {}
        for name, fn in calls.items():  # one more, untimed call each
            pair.clear_grads()
            memory[name], methods[name] = _call_peak_mb(fn, device)
    pair.clear_grads()
    peak = {part: {"selm_d2": memory["selm_d2_" + part], "official": memory["official_" + part]}
            for part in ("inference", "train_step")}
    for values in peak.values():
        values["target_met"] = values["selm_d2"] <= values["official"]
    return {"task": task, "backbone": backbone, "config": pair.config, "T": pair.num_frames,
            "size": pair.size, "output_size": OFFICIAL_OUTPUT_SIZE, "rounds": repeats,
            "warmup_rounds": 1, "amp": amp,
            "inference": _official_side_by_side(times, "inference",
                                                OFFICIAL_TARGETS["inference"]),
            "train_step": _official_side_by_side(times, "train_step",
                                                 OFFICIAL_TARGETS["train_step"]),
            "peak_memory_mb": peak, "memory_methods": methods,
            "weights_mb": {"selm_d2": _nbytes_mb(pair.model),
                           "official": _nbytes_mb(pair.ref, pair.vggish)},
            "official_mamba": pair.mamba}


def bench_official(device, repeats, models=OFFICIAL_MODELS, amp=None):
    """SelM-D2 against the authors' code, one row per (task, backbone) of ``models``: inference
    per clip, one training step and the peak memory of each, on the same clip and weights."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device {}: no CUDA device here".format(device))
    _require_official()
    rows = []
    for task, backbone in tqdm.tqdm(models, desc="official models", unit="model", leave=False):
        rows.append(bench_official_pair(task, backbone, device, repeats, amp))
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _official_device(machine):
    if machine["device"] != "cpu" and "gpu" in machine:
        return "{} (CUDA)".format(machine["gpu"])
    return "CPU {}, {} threads".format(machine["cpu"], machine["cpu_threads"])


def official_markdown(rows, machine):
    """The official section's table: one row per model."""
    def mark(met):
        return "✓" if met else "✗"

    def timing(part):
        return "{:.0f} | {:.0f} | {:.2f}× ({:.2f}–{:.2f}) {}".format(
            part["selm_d2_ms"], part["official_ms"], part["ratio"]["median"], part["ratio"]["q1"],
            part["ratio"]["q3"], mark(part["target_met"]))

    def memory(part):
        return "{:.0f} / {:.0f} {}".format(part["selm_d2"], part["official"],
                                           mark(part["target_met"]))

    first = rows[0]
    amp = first["amp"]
    lines = ["SelM-D2 against the SelM authors' code (../shared/reference/selm_official) on **{}**{}, "
             "same weights, same clip:".format(_official_device(machine),
                                              ", under torch.autocast({})".format(amp) if amp else ""),
             "",
             "| task | backbone | input (T × size²) | SelM-D2 inference (ms) | authors' (ms) "
             "| ratio (target ≤ {inference}) | SelM-D2 train step (ms) | authors' (ms) "
             "| ratio (target ≤ {train_step}) | peak memory inference, SelM-D2 / authors' (MB) "
             "| peak memory train step, SelM-D2 / authors' (MB) |".format(**OFFICIAL_TARGETS),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| {task} | {backbone} | {T} × {size}² | ".format(**r) + timing(r["inference"])
                     + " | " + timing(r["train_step"]) + " | "
                     + memory(r["peak_memory_mb"]["inference"]) + " | "
                     + memory(r["peak_memory_mb"]["train_step"]) + " |")
    methods = sorted({m for r in rows for m in r["memory_methods"].values()})
    mambas = sorted({r["official_mamba"] for r in rows})
    lines += ["",
              "Milliseconds per clip: medians over {} interleaved rounds after one warm-up round "
              "(each round one call of each side and mode, the order reversed every second "
              "round); ratio = SelM-D2 / authors', the median over rounds of that round's ratio "
              "(quartiles in brackets); ✓ = target met (memory: SelM-D2 ≤ authors').".format(
                  first["rounds"]),
              "Inference: SelM-D2's `model([clip])` in eval under `torch.inference_mode` "
              "(normalisation, VGGish, network, resize to {0}×{0} and probabilities); the "
              "authors': their VGGish on the log-mel, then their model, in eval under "
              "`torch.no_grad` (their forward ends with its resize to {0}×{0}).".format(
                  OFFICIAL_OUTPUT_SIZE),
              "Train step: forward + loss + backward of one clip in train mode (VGGish frozen on "
              "both sides), gradients cleared before; no optimizer step on either side.",
              "Peak memory: " + "; ".join(MEMORY_METHODS[m] for m in methods)
              + ". Weights are not counted (the authors' R50 model also holds an unused second "
              "ResNet branch; see weights_mb in benchmark.json).",
              "The authors' Mamba: " + "; ".join(mambas) + ".", ""]
    return lines


def _cpu_model():
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device):
    info = {"device": device, "torch": torch.__version__, "python": platform.python_version(),
            "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "cpu_threads": torch.get_num_threads()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _ratio_text(ratio):
    """A ``paired_ratio`` as "median× (q1–q3)"."""
    return "{median:.2f}× ({q1:.2f}–{q3:.2f})".format(**ratio)


def markdown(report):
    m = report["machine"]
    lines = ["Measured on {} ({}, torch {}, {} threads) by `python tools/benchmark.py{}`.".format(
        m.get("gpu", "CPU"), m["cpu"], m["torch"], m["cpu_threads"],
        " --quick` (AVS-Synth models, tiny inputs: a check of the script, not a measurement of "
        "the paper models" if report.get("quick") else ""), ""]
    if "latency" in report:
        lines += ["| one clip (frames × size) | SelM (s) | visual backbone alone (s) | backbone + VGGish (s) "
                  "| SelM / backbone | SelM / encoders |", "|---|---|---|---|---|---|"]

        for r in report["latency"]:
            lines.append("| {backbone} ({T} × {size}²) | {selm_s:.3f} | {backbone_alone_s:.3f} | "
                         "{encoders_alone_s:.3f} | ".format(**r)
                         + "{} | {} |".format(_ratio_text(r["selm_over_backbone"]),
                                             _ratio_text(r["selm_over_encoders"])))
        lines += ["", "Seconds: medians over {} interleaved rounds; ratios: the median over rounds of "
                  "that round's ratio (quartiles in brackets).".format(report["latency"][0]["rounds"]), ""]
    if "scaling" in report:
        lines += ["| SelM latency | " + " | ".join("T={T} ({size}²)".format(**r) for r in report["scaling"]["frames"])
                  + " | " + " | ".join("{size}² (T={T})".format(**r) for r in report["scaling"]["resolution"]) + " |",
                  "|---" * (1 + len(report["scaling"]["frames"]) + len(report["scaling"]["resolution"])) + "|",
                  "| seconds | " + " | ".join("{:.3f}".format(r["latency_s"]) for r in report["scaling"]["frames"])
                  + " | " + " | ".join("{:.3f}".format(r["latency_s"]) for r in report["scaling"]["resolution"]) + " |",
                  ""]
    if "breakdown" in report:
        rows = report["breakdown"]
        parts = sorted(rows[0]["seconds"], key=lambda p: (p in ("other", "total"), p))
        lines += ["| SelM time per part ({}²) | ".format(rows[0]["size"]) + " | ".join(
            "T={T} (s) | per frame (ms)".format(**r) for r in rows) + " |",
            "|---" * (1 + 2 * len(rows)) + "|"]
        for part in parts:
            lines.append("| {} | ".format(part) + " | ".join(
                "{:.3f} | {:.1f}".format(r["seconds"][part], 1000 * r["seconds"][part] / r["T"])
                for r in rows) + " |")
        lines.append("")
    if "train" in report:
        lines += ["| training step | clips/batch | s/step | clips/s |", "|---|---|---|---|"]
        for name, r in report["train"].items():
            lines.append("| {} | {batch_clips} | {step_s:.3f} | {clips_per_s:.2f} |".format(name, **r))
        lines.append("")
    if "scan" in report:
        s = report["scan"]
        lines += ["| selective scan fwd+bwd (L={L}, d_inner={d_inner}, d_state={d_state}) | s |".format(**s),
                  "|---|---|", "| step-by-step reference | {:.4f} |".format(s["sequential_s"]),
                  "| vectorised (chunked) | {:.4f} ({:.1f}× faster) |".format(s["vectorised_s"], s["speedup"])]
        if s.get("mamba_ssm_s") is not None:
            lines.append("| mamba-ssm CUDA kernel | {:.4f} |".format(s["mamba_ssm_s"]))
        lines.append("")
    if report.get("conv3x3"):
        lines += ["| 3x3 conv at CPU inference, C_in → 256 (frames × size) | oneDNN (s) | NNPACK (s) "
                  "| NNPACK / oneDNN | SelM-D2 uses | NNPACK workspace (MB) |",
                  "|---|---|---|---|---|---|"]
        for r in report["conv3x3"]:
            lines.append("| {C_in} → {C_out} ({T} × {size}²) | {onednn_s:.3f} | {nnpack_s:.3f} | "
                         .format(**r) + _ratio_text(r["nnpack_over_onednn"]) + " | "
                         + ("NNPACK" if r["selm_d2_uses_nnpack"] else "oneDNN")
                         + " | {} |".format("n/a" if r["nnpack_workspace_mb"] is None
                                            else "{:.0f}".format(r["nnpack_workspace_mb"])))
        lines += ["", "NNPACK workspace: RSS growth of a fresh process's first NNPACK call on one "
                  "band of rows, minus its output; allocated outside PyTorch's allocator (so not in "
                  "the official section's peak tensor memory) and kept per thread.", ""]
    if "data" in report:
        lines += ["| data loading (5 × {}² frames + wav + log-mel) | ".format(report["data"][0]["size"]) + " | ".join(
            "{workers} workers".format(**r) for r in report["data"]) + " |",
            "|---" * (1 + len(report["data"])) + "|",
            "| clips/s | " + " | ".join("{:.1f}".format(r["clips_per_s"]) for r in report["data"]) + " |", ""]
    if "flops" in report:
        lines += ["| config (frames × size) | params (M) | of which visual backbone (M) | GFLOPs / clip |",
                  "|---|---|---|---|"]
        for r in report["flops"]:
            lines.append("| {backbone} ({T} × {size}²) | {params_M:.1f} | {backbone_params_M:.1f} | "
                         "{gflops_per_clip:.1f} |".format(**r))
        lines.append("")
    if "avss_memory" in report:
        lines += ["| one AVSS clip, {T} × {width}×{height}, {classes} classes, eval | model footprint (MB) | "
                  "peak above it (MB) |".format(**report["avss_memory"][0]), "|---|---|---|"]
        for r in report["avss_memory"]:
            lines.append("| {output} | {model_footprint_mb:.0f} | {peak_above_model_mb:.0f} |"
                         .format(**r))
        lines.append("")
    if "official" in report and report["official"]:
        lines += official_markdown(report["official"], m)
    if "peak_memory_mb" in report:
        lines.append("Peak memory ({}): ".format("CUDA allocated" if m["device"] == "cuda" else "process RSS")
                     + ", ".join("{} {:.0f} MB".format(k, v) for k, v in report["peak_memory_mb"].items()))
    return "\n".join(lines) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path):
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)


def scaling_plot(report, path):
    plt = _pyplot()
    frames = report["scaling"]["frames"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [r["T"] for r in frames]
    ys = [r["latency_s"] for r in frames]
    ax.plot(xs, ys, "o-", label="SelM, {}²".format(frames[0]["size"]))
    ax.plot(xs, [ys[0] * x / xs[0] for x in xs], "--", color="gray", label="linear in T")
    ax.set_xlabel("frames per clip (T)")
    ax.set_ylabel("latency per clip (s)")
    ax.set_title("SelM scaling on {}".format(report["machine"].get("gpu", "CPU")))
    ax.legend()
    _save_figure(fig, path)


def breakdown_plot(report, path):
    plt = _pyplot()
    rows = report["breakdown"]
    parts = [p for p in sorted(rows[0]["seconds"]) if p != "total"]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    height = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ax.barh([j + i * height for j in range(len(parts))],
                [1000 * r["seconds"][p] / r["T"] for p in parts], height=height,
                label="T={}".format(r["T"]))
    ax.set_yticks([j + height * (len(rows) - 1) / 2 for j in range(len(parts))])
    ax.set_yticklabels(parts)
    ax.invert_yaxis()
    ax.set_xlabel("ms per frame")
    ax.set_title("SelM time per part ({}²) on {}".format(rows[0]["size"],
                                                     report["machine"].get("gpu", "CPU")))
    ax.legend()
    _save_figure(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS),
                        choices=SECTIONS + OPTIONAL_SECTIONS,
                        help="default: all but {} (which run only when named)".format(
                            ", ".join(OPTIONAL_SECTIONS)))
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument("--latency-rounds", type=int, default=None,
                        help="interleaved rounds of the latency section, whose ratios need more "
                             "than --repeats on a shared machine; default 15 (--quick: 5)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output-dir", default="output/benchmark")
    parser.add_argument("--official-models", nargs="+", type=official_model,
                        default=list(OFFICIAL_MODELS), metavar="TASK:BACKBONE",
                        help="official section: which of the authors' models, e.g. s4:R50 "
                             "ms3:PVT (default: all six)")
    parser.add_argument("--amp", nargs="?", const="bf16", default=None, choices=sorted(AMP_DTYPES),
                        help="official section: run both sides under torch.autocast in this "
                             "dtype (--amp alone: bf16)")
    parser.add_argument("--quick", action="store_true",
                        help="every section on the AVS-Synth configs, tiny inputs, 1 repeat and 5 "
                             "latency rounds (unless given): checks the script, not the paper models")
    args = parser.parse_args(argv)
    plan = QUICK_PLAN if args.quick else DEFAULT_PLAN
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.latency_rounds is None:
        args.latency_rounds = 5 if args.quick else 15
    os.makedirs(args.output_dir, exist_ok=True)

    report = {"machine": machine_info(args.device), "peak_memory_mb": {}}
    if args.quick:
        report["quick"] = True
    runners = {
        "latency": lambda: bench_latency(args.device, args.latency_rounds, plan["paper_configs"]),
        "scaling": lambda: bench_scaling(args.device, args.repeats, plan["r50_config"],
                                         plan["scaling_frames"], plan["scaling_sizes"]),
        "breakdown": lambda: bench_breakdown(args.device, args.repeats, plan["breakdown_frames"],
                                             plan["r50_config"]),
        "train": lambda: bench_train(args.device, args.repeats, plan["train_configs"]),
        "scan": lambda: bench_scan(args.device, args.repeats, length=plan["scan_length"]),
        "conv3x3": lambda: bench_conv3x3(args.device, args.repeats, plan["conv3x3_shapes"],
                                         plan["conv3x3_frames"]),
        "data": lambda: bench_data(plan["data_clips"], plan["data_size"], plan["data_workers"]),
        "flops": lambda: bench_flops(args.device, plan["paper_configs"]),
        "avss_memory": lambda: bench_avss_memory(args.device, plan["avss_config"],
                                                 plan["avss_output_size"]),
        "official": lambda: bench_official(args.device, args.repeats, args.official_models,
                                           args.amp),
    }
    for section in tqdm.tqdm(args.sections, desc="benchmark", unit="section"):
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        report[section] = runners[section]()
        report["peak_memory_mb"][section] = peak_memory_mb(args.device)
        # Partial results survive an interrupted run.
        write_text_atomic(os.path.join(args.output_dir, "benchmark.json"), json.dumps(report, indent=2))

    table = markdown(report)
    write_text_atomic(os.path.join(args.output_dir, "benchmark.md"), table)
    if "scaling" in report:
        scaling_plot(report, os.path.join(args.output_dir, "scaling.png"))
    if "breakdown" in report:
        breakdown_plot(report, os.path.join(args.output_dir, "breakdown.png"))
    print(table)
    return report


if __name__ == "__main__":
    main()

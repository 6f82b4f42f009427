#!/usr/bin/env python
"""Speed and memory of SelM on whatever device this runs on (SPEC §7).

    python tools/benchmark.py                                  # every section, CPU or CUDA
    python tools/benchmark.py --sections latency scan --repeats 5

Writes ``benchmark.json`` (all numbers + the machine), ``benchmark.md`` (the README table)
and ``scaling.png`` (latency vs frames per clip) into ``--output-dir``. Sections:

- latency: one clip (T=5, 224²) through SelM, through its visual backbone alone, and through
  its two encoders alone (backbone + VGGish), for the R50 and PVT-v2-b5 paper configs;
- scaling: SelM-R50 latency at T = 5, 10, 20, 40 and at 160², 224², 320²;
- breakdown: SelM-R50 time per part (encoders, DAM per stage, projections, BCSM, CLEVER, the
  rest) at T = 5 and 40, from forward hooks, as a table and ``breakdown.png``;
- train: one training step (forward + backward + AdamW) of SelM-R50 and of the AVS-Synth model;
- scan: BCSM's selective scan, vectorised vs step-by-step, fwd + bwd (and mamba-ssm on CUDA);
- data: clip loading throughput (5 frames 224², wav decoding + log-mel) with 0, 1, 2 workers;
- flops: parameters and FLOPs (torch's FlopCounterMode) of the paper configs;
- avss_memory: peak memory above the model's own footprint of one 10-frame 1280x720 clip
  through the R50 AVSS config in eval, for each output a caller can ask for (full-size
  probabilities, per-pixel labels, the evaluator's request at TEST.AVS.EVAL_SIZE), each in a
  fresh process.
Latencies and scaling series are timed interleaved: one call of each side per round. A ratio
is the median over rounds of that round's ratio, with its quartiles, so that a slow spell of a
shared machine lands on both sides of it (``--latency-rounds``, default 15). Inference is
timed under ``torch.inference_mode``, as the demo's predictor and ``Trainer.test`` run it.
Peak memory: CUDA max allocated on GPU; on CPU the process's peak RSS after each section.
"""
import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

import torch
import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from detectron2.modeling import build_model  # noqa: E402

from selm_d2 import load_config  # noqa: E402
from selm_d2.modeling.mamba import selective_scan, selective_scan_ref  # noqa: E402
from selm_d2.utils import atomic_path, write_text_atomic  # noqa: E402
from train_net import Trainer  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PAPER_CONFIGS = {"R50": "configs/ms3/selm_R50.yaml", "PVT-v2-b5": "configs/ms3/selm_pvt_v2_b5.yaml"}
AVSS_CONFIG = "configs/avss/selm_R50.yaml"
SYNTH_CONFIG = "configs/synth/ms3.yaml"
SECTIONS = ("latency", "scaling", "breakdown", "train", "scan", "data", "flops", "avss_memory")
# What a caller can ask SelM to return (keys of the input clip dict), for avss_memory.
AVSS_OUTPUT_REQUESTS = {
    "probabilities at 1280x720 (default)": {},
    "labels at 1280x720 (demo)": {"output_format": "labels"},
    "evaluator at EVAL_SIZE 224": None,  # filled from the evaluator itself
}


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


def interleaved_rounds(fns, device, repeats, warmup=1):
    """{name: [seconds per round]} of each ``fns[name]()``, timed round-robin (one call of each
    per round) so that machine noise lands on every side of a ratio rather than on one block."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
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


def bench_latency(device, repeats):
    rows = []
    for name, path in PAPER_CONFIGS.items():
        model = build_seeded(load_cfg(path, device)).eval()
        clip = clip_input(5, 224)
        images = ((clip["image"].float() - model.pixel_mean.cpu()) / model.pixel_std.cpu()).to(device)
        audio = clip["audio"].to(device)
        with torch.inference_mode():
            times = interleaved_rounds({"selm": lambda: model([clip]),
                                        "backbone": lambda: model.backbone(images),
                                        "encoders": lambda: _encoders_alone(model, images, audio)},
                                       device, repeats)
        selm, backbone, encoders = (statistics.median(times[k])
                                    for k in ("selm", "backbone", "encoders"))
        rows.append({"backbone": name, "rounds": repeats, "selm_s": selm,
                     "backbone_alone_s": backbone, "encoders_alone_s": encoders,
                     "selm_over_backbone": paired_ratio(times["selm"], times["backbone"]),
                     "selm_over_encoders": paired_ratio(times["selm"], times["encoders"]),
                     "clips_per_s": 1.0 / selm})
    return rows


def bench_scaling(device, repeats):
    """SelM-R50 latency over T and over frame size, each series timed interleaved."""
    model = build_seeded(load_cfg(PAPER_CONFIGS["R50"], device)).eval()

    def series(shapes):
        clips = {shape: clip_input(*shape) for shape in shapes}
        with torch.inference_mode():
            return interleaved({shape: (lambda c=clip: model([c])) for shape, clip in clips.items()},
                               device, repeats)

    frames = series([(t, 224) for t in (5, 10, 20, 40)])
    sizes = series([(5, size) for size in (160, 224, 320)])
    return {"frames": [{"T": t, "size": size, "latency_s": v} for (t, size), v in frames.items()],
            "resolution": [{"T": t, "size": size, "latency_s": v} for (t, size), v in sizes.items()]}


# Parts of SelM in the time breakdown, by the first component of a module's path that names
# one (pre-processing, token pooling and post-processing are what remains).
BREAKDOWN_PARTS = (("backbone", "visual encoder"), ("audio_encoder", "VGGish"), ("dam", "DAM"),
                   ("visual_proj", "projections"), ("audio_proj", "projections"),
                   ("bcsm", "BCSM"), ("clever", "CLEVER"))


def _breakdown_part(path):
    parts = path.split(".")
    for name, label in BREAKDOWN_PARTS:
        if name in parts:
            index = parts.index(name)
            if name == "dam":  # one row per DAM stage
                return "DAM " + parts[index + 1] if len(parts) > index + 1 else None
            return label
    return None


class ModuleTimer:
    """Wall time of each part of a model (``BREAKDOWN_PARTS``) from forward hooks.

    Only the outermost call of a part is timed, so nested modules are not counted twice.
    """

    def __init__(self, model, device):
        self.device = device
        self.seconds = {}
        self._depth, self._start, self._part = 0, 0.0, None
        for path, module in model.named_modules():
            part = _breakdown_part(path) if path else None
            if part is not None:
                module.register_forward_pre_hook(self._enter(part))
                module.register_forward_hook(self._leave)

    def _enter(self, part):
        def hook(module, inputs):
            if self._depth == 0:
                _sync(self.device)
                self._start, self._part = time.perf_counter(), part
            self._depth += 1
        return hook

    def _leave(self, module, inputs, output):
        self._depth -= 1
        if self._depth == 0:
            _sync(self.device)
            self.seconds[self._part] = (self.seconds.get(self._part, 0.0)
                                        + time.perf_counter() - self._start)


def bench_breakdown(device, repeats, frames=(5, 40)):
    """Per-part time of one SelM-R50 clip (224²) at each T of ``frames`` (medians of repeats);
    "other" is what no part covers (normalisation, padding, token pooling, post-processing)."""
    model = build_seeded(load_cfg(PAPER_CONFIGS["R50"], device)).eval()
    timer = ModuleTimer(model, device)
    rows = []
    for t in frames:
        clip = clip_input(t, 224)
        runs = []
        with torch.inference_mode():
            model([clip])  # warm-up
            for _ in range(repeats):
                timer.seconds = {}
                _sync(device)
                start = time.perf_counter()
                model([clip])
                _sync(device)
                total = time.perf_counter() - start
                runs.append(dict(timer.seconds, other=total - sum(timer.seconds.values()),
                                 total=total))
        rows.append({"T": t, "seconds": {part: statistics.median(r[part] for r in runs)
                                         for part in runs[0]}})
    return rows


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


def bench_train(device, repeats):
    return {
        "SelM-R50 (224², T=5)": _train_step_time(load_cfg(PAPER_CONFIGS["R50"], device), device, repeats, 4),
        "SelM AVS-Synth (configs/synth/ms3.yaml)": _train_step_time(
            load_cfg(SYNTH_CONFIG, device), device, repeats, load_cfg(SYNTH_CONFIG, device).SOLVER.IMS_PER_BATCH),
    }


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


def bench_data(clips=48):
    """Loading throughput of the real loader + mapper on generated 224² S4-layout clips."""
    from detectron2.data import DatasetCatalog, build_detection_test_loader

    from selm_d2.data import AVSClipDatasetMapper, register_avs_dataset
    from selm_d2.data.synthetic import generate

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, layouts=("s4",), clips_per_split={"train": clips, "val": 0, "test": 0}, size=224, seed=0)
        name = "_benchmark_s4_{}".format(os.getpid())
        register_avs_dataset(name, tmp, "avsbench_s4", split="train")
        cfg = load_cfg(SYNTH_CONFIG, "cpu", ["INPUT.AVS.SIZE", 224, "INPUT.AVS.AUDIO.SOURCE", "wav"])
        dicts = DatasetCatalog.get(name)
        mapper = AVSClipDatasetMapper(cfg, is_train=True)
        for workers in (0, 1, 2):
            loader = build_detection_test_loader(dicts, mapper=mapper, num_workers=workers)
            start = time.perf_counter()
            count = sum(1 for _ in loader)
            results.append({"workers": workers, "clips_per_s": count / (time.perf_counter() - start)})
    return results


def bench_flops(device):
    """Parameters and FLOPs of one clip. torch's dispatch-level FlopCounterMode, not fvcore's
    jit tracer: tracing cannot enter the Mamba scan's custom autograd Function."""
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    for name, path in PAPER_CONFIGS.items():
        model = build_seeded(load_cfg(path, device)).eval()
        clip = clip_input(5, 224)
        counter = FlopCounterMode(display=False)
        # Not under no_grad: FlopCounterMode's module tracker hooks autograd.
        with counter:
            model([clip])
        rows.append({"backbone": name, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                     "backbone_params_M": sum(p.numel() for p in model.backbone.parameters()) / 1e6,
                     "gflops_per_clip": counter.get_total_flops() / 1e9})
    return rows


def _proc_status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no {} in /proc/self/status".format(field))


def _avss_clip_peak(device, request):
    """In a fresh process: (model footprint MB, peak MB above it) of one eval pass."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = load_cfg(AVSS_CONFIG, device)
    model = build_seeded(cfg).eval()
    clip = dict(clip_input(10, cfg.INPUT.AVS.SIZE), height=720, width=1280, **request)
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


def bench_avss_memory(device):
    """Peak memory of one 10-frame 1280x720 AVSS clip (R50, 71 classes) per output request."""
    from selm_d2.evaluation import model_output_request

    eval_size = load_cfg(AVSS_CONFIG, device).TEST.AVS.EVAL_SIZE
    requests = dict(AVSS_OUTPUT_REQUESTS)
    requests["evaluator at EVAL_SIZE 224"] = model_output_request("avss", eval_size)
    rows = []
    # spawn: each measurement starts from a process that has never held a clip.
    context = multiprocessing.get_context("spawn")
    for name, request in tqdm.tqdm(requests.items(), desc="avss memory", leave=False):
        with context.Pool(1) as pool:
            footprint, above = pool.apply(_avss_clip_peak, (device, request))
        rows.append({"output": name, "request": request, "model_footprint_mb": footprint,
                     "peak_above_model_mb": above})
    return rows


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


def markdown(report):
    m = report["machine"]
    lines = ["Measured on {} ({}, torch {}, {} threads) by `python tools/benchmark.py`.".format(
        m.get("gpu", "CPU"), m["cpu"], m["torch"], m["cpu_threads"]), ""]
    if "latency" in report:
        lines += ["| one clip, T=5, 224² | SelM (s) | visual backbone alone (s) | backbone + VGGish (s) "
                  "| SelM / backbone | SelM / encoders |", "|---|---|---|---|---|---|"]

        def ratio(r):
            return "{median:.2f}× ({q1:.2f}–{q3:.2f})".format(**r)

        for r in report["latency"]:
            lines.append("| {backbone} | {selm_s:.3f} | {backbone_alone_s:.3f} | {encoders_alone_s:.3f} | ".format(**r)
                         + "{} | {} |".format(ratio(r["selm_over_backbone"]), ratio(r["selm_over_encoders"])))
        lines += ["", "Seconds: medians over {} interleaved rounds; ratios: the median over rounds of "
                  "that round's ratio (quartiles in brackets).".format(report["latency"][0]["rounds"]), ""]
    if "scaling" in report:
        lines += ["| SelM-R50 latency | " + " | ".join("T={T}".format(**r) for r in report["scaling"]["frames"])
                  + " | " + " | ".join("{size}²".format(**r) for r in report["scaling"]["resolution"]) + " |",
                  "|---" * (1 + len(report["scaling"]["frames"]) + len(report["scaling"]["resolution"])) + "|",
                  "| seconds | " + " | ".join("{:.3f}".format(r["latency_s"]) for r in report["scaling"]["frames"])
                  + " | " + " | ".join("{:.3f}".format(r["latency_s"]) for r in report["scaling"]["resolution"]) + " |",
                  ""]
    if "breakdown" in report:
        rows = report["breakdown"]
        parts = sorted(rows[0]["seconds"], key=lambda p: (p in ("other", "total"), p))
        lines += ["| SelM-R50 time per part (224²) | " + " | ".join(
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
    if "data" in report:
        lines += ["| data loading (5 × 224² frames + wav + log-mel) | " + " | ".join(
            "{workers} workers".format(**r) for r in report["data"]) + " |",
            "|---" * (1 + len(report["data"])) + "|",
            "| clips/s | " + " | ".join("{:.1f}".format(r["clips_per_s"]) for r in report["data"]) + " |", ""]
    if "flops" in report:
        lines += ["| paper config | params (M) | of which visual backbone (M) | GFLOPs / clip (T=5, 224²) |",
                  "|---|---|---|---|"]
        for r in report["flops"]:
            lines.append("| {backbone} | {params_M:.1f} | {backbone_params_M:.1f} | {gflops_per_clip:.1f} |".format(**r))
        lines.append("")
    if "avss_memory" in report:
        lines += ["| one AVSS clip, 10 × 1280×720, R50, 71 classes, eval | model footprint (MB) | "
                  "peak above it (MB) |", "|---|---|---|"]
        for r in report["avss_memory"]:
            lines.append("| {output} | {model_footprint_mb:.0f} | {peak_above_model_mb:.0f} |"
                         .format(**r))
        lines.append("")
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
    ax.plot(xs, ys, "o-", label="SelM-R50, 224²")
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
    ax.set_title("SelM-R50 time per part on {}".format(report["machine"].get("gpu", "CPU")))
    ax.legend()
    _save_figure(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-rounds", type=int, default=15,
                        help="interleaved rounds of the latency section, whose ratios need more "
                             "than --repeats on a shared machine")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output-dir", default="output/benchmark")
    args = parser.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)

    report = {"machine": machine_info(args.device), "peak_memory_mb": {}}
    runners = {
        "latency": lambda: bench_latency(args.device, args.latency_rounds),
        "scaling": lambda: bench_scaling(args.device, args.repeats),
        "breakdown": lambda: bench_breakdown(args.device, args.repeats),
        "train": lambda: bench_train(args.device, args.repeats),
        "scan": lambda: bench_scan(args.device, args.repeats),
        "data": bench_data,
        "flops": lambda: bench_flops(args.device),
        "avss_memory": lambda: bench_avss_memory(args.device),
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


if __name__ == "__main__":
    main()

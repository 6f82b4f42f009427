"""Training runs driven from the tools: ``train_net.py`` commands, run side by side, their
metrics read back and summarised over seeds."""
import json
import os
import statistics
import subprocess
import sys

__all__ = ["train_command", "read_metrics", "mean_std", "format_mean_std", "threads_per_job",
           "job_env", "run_jobs"]


def train_command(config_file, output_dir, opts=()):
    """argv of ``train_net.py`` that trains ``config_file`` into ``output_dir``, resuming from
    its last checkpoint, and evaluates once at the end.

    detectron2 evaluates after training (also when ``--resume`` finds training finished), so the
    one command trains, resumes and evaluates. ``opts``: further ``KEY VALUE`` options.
    """
    return [sys.executable, "train_net.py", "--config-file", config_file, "--resume",
            "OUTPUT_DIR", output_dir, "TEST.EVAL_PERIOD", "0"] + [str(o) for o in opts]


def read_metrics(output_dir, dataset_name):
    """All metrics the AVS evaluator wrote for ``dataset_name`` under ``output_dir``
    (``inference/<dataset>/avs_results*.json``, the illusion passes' prefixed keys included)."""
    folder = os.path.join(output_dir, "inference", dataset_name)
    if not os.path.isdir(folder):
        raise FileNotFoundError("no evaluation results in {}: did the training finish?".format(folder))
    metrics = {}
    for fname in sorted(os.listdir(folder)):
        if fname.startswith("avs_results") and fname.endswith(".json"):
            with open(os.path.join(folder, fname)) as f:
                metrics.update(json.load(f)["metrics"])
    return metrics


def mean_std(values):
    """(mean, sample standard deviation) of ``values``; the deviation of one value is 0."""
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def format_mean_std(values, digits=1):
    """``"m ± s"`` over several values, the value alone for one."""
    values = list(values)
    mean, std = mean_std(values)
    if len(values) == 1:
        return "{:.{d}f}".format(mean, d=digits)
    return "{:.{d}f} ± {:.{d}f}".format(mean, std, d=digits)


def threads_per_job(jobs, cpus=None):
    """Intra-op threads for each of ``jobs`` concurrent processes: the CPUs split evenly, ≥ 1."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus // max(1, jobs))


def job_env(env, jobs):
    """``env`` with the thread count of one of ``jobs`` concurrent trainings.

    A thread count the user set (``OMP_NUM_THREADS``) is kept.
    """
    if "OMP_NUM_THREADS" in env:
        return dict(env)
    return dict(env, OMP_NUM_THREADS=str(threads_per_job(jobs)))


def run_jobs(jobs, env, cwd):
    """Start every job at once and wait for all of them.

    Args:
        jobs: list of ``(cmd, log)``: ``cmd`` an argv list; ``log`` a file that receives its
            stdout and stderr (created with its folder), or None to print to this console.
        env: environment of every job (see :func:`job_env`).
    Returns:
        None; raises RuntimeError naming the command and the log's last lines when a job fails
        (the others are still waited for, so no process is left behind).
    """
    procs = []
    try:
        for cmd, log in jobs:
            out = None
            if log is not None:
                os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
                out = open(log, "w")
                out.write("$ " + " ".join(cmd) + "\n")
                out.flush()
            try:
                proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out,
                                        stderr=subprocess.STDOUT if out else None)
            except BaseException:
                if out is not None:
                    out.close()
                raise
            procs.append((cmd, log, out, proc))
    finally:
        failures = []
        for cmd, log, out, proc in procs:
            code = proc.wait()
            if out is not None:
                out.close()
            if code != 0:
                tail = ""
                if log is not None:
                    with open(log) as f:
                        tail = "".join(f.readlines()[-30:])
                failures.append("{} failed (exit {}){}:\n{}".format(
                    " ".join(cmd), code, "; log " + log if log else "", tail))
    if failures:
        raise RuntimeError("\n".join(failures))

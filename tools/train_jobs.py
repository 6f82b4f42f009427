"""Run several ``train_net.py`` commands at once, the CPU threads shared out between them.

Each job gets an equal share of the CPU threads, so that jobs do not oversubscribe the cores.
Used by ``tools/run_demo.py`` (SelM and, with ``--twin``, its visual-only twin).
"""
import os
import subprocess


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

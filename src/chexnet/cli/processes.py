"""Starting a command's processes: ``--nproc N`` (torch elastic) and ``--launcher spark``, unless a launcher already did."""

from __future__ import annotations

LAUNCHER_OPTIONS = ("--nproc", "--max-restarts", "--launcher", "--spark-master", "--spark-conf")


def worker_argv(args) -> list[str]:
    """This command line without the launcher's options: what every worker process runs."""
    from chexnet.launch.local import strip_option

    argv = args.argv
    for name in LAUNCHER_OPTIONS:
        argv = strip_option(argv, name)
    return argv


def spawn_if_asked(args, roles: dict[int, str] | None = None) -> bool:
    """Start the worker processes when this command asks for them (``--nproc N``, ``--launcher spark``) and no
    launcher started this process; True when they ran (this process only waited for them). ``roles``: each
    rank's role (``--strategy ps``), for the launcher's error about a failed process."""
    launcher = getattr(args, "launcher", "local")
    if launcher != "spark" and (getattr(args, "spark_master", None) or getattr(args, "spark_conf", None)):
        raise ValueError("--spark-master and --spark-conf go with --launcher spark")
    wants = launcher == "spark" or args.nproc is not None
    if not wants:
        return False
    from chexnet import dist

    outer = dist.detect()
    if outer.launcher != "none":  # torchrun, mpirun, srun (or a Spark task) already started this job's processes
        asked = "--launcher spark" if launcher == "spark" else f"--nproc {args.nproc}"
        raise ValueError(f"{asked}: this process was started by {dist.describe_launcher(outer)}, which starts the "
                         f"processes itself: choose one launcher (drop {asked.split()[0]}, or run chexnet "
                         f"{args.command} {asked} outside {dist.LAUNCHER_NAMES.get(outer.launcher, outer.launcher)})")
    if launcher == "spark":
        from chexnet.launch import spark

        if args.max_restarts:
            raise ValueError("--max-restarts is for --launcher local: Spark retries a failed barrier stage itself "
                             "(spark.task.maxFailures); add --resume auto so that a retry continues from last.pt")
        spark.run(worker_argv(args), args.nproc or 1, args.spark_master, spark.parse_conf(args.spark_conf))
        return True
    if args.nproc > 1:
        from chexnet.launch.local import spawn

        spawn(args.nproc, worker_argv(args), max_restarts=getattr(args, "max_restarts", 0), roles=roles)
        return True
    return False

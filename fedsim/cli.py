"""The `fedsim` command line: a thin layer over the Python API.

    fedsim run SCENARIO [--out DIR] [--set key=value ...] [--stop-after ROUND]
    fedsim run --resume RUN_DIR
    fedsim estimate SCENARIO [--out DIR] [--set key=value ...]
    fedsim sweep SWEEP [--out DIR] [--set key=value ...] [--overwrite]
    fedsim cost SCENARIO --device CLASS [--network CLASS] [--gpus N --zero 3] [--json]
    fedsim validate SCENARIO [--set key=value ...]
    fedsim report RUN_DIR
    fedsim compare RUN_A RUN_B ... [--out DIR]

Configuration and usage errors print one line and exit with code 2; nothing already written is touched. A run
stopped by a runtime failure prints one line (which checkpoint to resume from) and exits with code 1; Ctrl-C
exits with code 130.
"""

from __future__ import annotations

import argparse
import os
import sys

from fedsim.errors import ConfigError, RunAborted


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedsim", description="Simulate federated fine-tuning of LLMs on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    def scenario_cmd(name: str, help_: str, optional: bool = False) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        c.add_argument("scenario", nargs="?" if optional else None, help="scenario YAML file")
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a scenario key, e.g. --set server.rounds=5 (repeatable; value parsed as YAML)")
        return c

    r = scenario_cmd("run", "train a federation and write its run directory", optional=True)
    r.add_argument("--out", help="run directory (default runs/<scenario name>)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its newest checkpoint")
    r.add_argument("--stop-after", type=int, metavar="ROUND", help="stop (with a checkpoint) after this round")
    r.add_argument("--overwrite", action="store_true", help="replace an existing non-empty run directory")
    r.add_argument("--quiet", action="store_true", help="no progress bar or summary table")
    r.add_argument("--report", choices=("background", "inline", "off"), default="background",
                   help="report.html: drawn by a detached process after exit (default), before exit, or not at all "
                        "(fedsim report RUN_DIR draws it any time)")
    e = scenario_cmd("estimate", "compute a federation's costs without training (fast, vectorized)")
    e.add_argument("--out", help="run directory (default runs/<scenario name>)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing non-empty run directory")
    e.add_argument("--quiet", action="store_true", help="no summary table")
    e.add_argument("--report", action="store_true", help="also write report.html (as fedsim report does)")
    w = sub.add_parser("sweep", help="run many federations (a grid or search over scenario keys and seeds) on "
                                     "Ray Tune; re-running it resumes")
    w.add_argument("sweep", help="sweep YAML file (see scenarios/sweeps/)")
    w.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a scenario key for every trial, e.g. --set server.rounds=3 (repeatable)")
    w.add_argument("--out", help="sweep directory (default runs/sweeps/<sweep name>); the same sweep into the same "
                                 "directory resumes it")
    w.add_argument("--overwrite", action="store_true", help="delete the sweep directory (finished trials included) "
                                                                "and start over")
    w.add_argument("--quiet", action="store_true", help="no line per finished trial")
    c = scenario_cmd("cost", "one client's cost breakdown (model, memory, FLOPs, bytes, time, energy)")
    c.add_argument("--device", required=True, help="catalog device class, e.g. phone-flagship")
    c.add_argument("--network", help="catalog network class (default: the device's most common)")
    c.add_argument("--gpus", type=int, default=0, help="also size DeepSpeed ZeRO model states over this many GPUs")
    c.add_argument("--zero", type=int, default=3, choices=(0, 2, 3), help="ZeRO stage for --gpus")
    c.add_argument("--offload", action="store_true", help="ZeRO optimizer offload to CPU for --gpus")
    c.add_argument("--trace", action="store_true", help="trace one real training step on fake tensors (FLOPs and "
                                                        "peak memory, by part and layer; cached, and used by "
                                                        "estimate mode from then on)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    scenario_cmd("validate", "check a scenario and print it fully resolved")
    rep = sub.add_parser("report", help="write RUN_DIR/report.html (timeline, round times, loss, costs)")
    rep.add_argument("run_dir")
    cmp_ = sub.add_parser("compare", help="overlay several runs (e.g. sync vs async) in one HTML page")
    cmp_.add_argument("run_dirs", nargs="+")
    cmp_.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    return p


def _print_cost(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from fedsim.metrics.console import human_bytes, human_time

    table = Table(title=f"fedsim cost: {report['model']} on {report['device']['name']} ({report['device']['network']})",
                  show_header=False)
    table.add_row("cost model", "traced (a cached trace of this step)" if report["cost_model"] == "traced"
                  else "analytic (fedsim cost --trace traces the step)")
    for key in ("model_params", "trainable_params", "flops_per_step", "flops_per_client_round"):
        table.add_row(key, f"{report[key]:.4g}")
    for key in ("adapter_bytes", "upload_bytes", "memory_bytes"):
        table.add_row(key, human_bytes(report[key]))
    for part, value in report["memory_breakdown"].items():
        table.add_row(f"  memory: {part}", human_bytes(value))
    dev = report["device"]
    rank = f", LoRA rank {dev['rank']}" if any("/r" in k for k in report["memory_options"]) and dev["rank"] else ""
    table.add_row("eligible", f"{dev['eligible']} ({dev['quantization'] or 'does not fit'}{rank}; "
                              f"{human_bytes(dev['memory_bytes'])} usable)")
    for key in ("t_download_s", "t_compute_s", "t_upload_s", "round_time_s"):
        table.add_row(key, human_time(dev[key]))
    table.add_row("energy per round", f"{dev['energy_j']:.4g} J ({dev['co2_g']:.3g} g CO2)")
    table.add_row("implied throughput", f"{dev['tokens_per_s']:.4g} tokens/s at {dev['efficiency']:.0%} of "
                                        f"{dev['peak_flops']:.4g} FLOP/s (catalog efficiency)")
    if "zero" in report:
        z = report["zero"]
        table.add_row(f"ZeRO-{z['stage']} x{z['gpus']} GPUs", human_bytes(z["model_state_bytes_per_gpu"]) + " per GPU")
    Console().print(table)
    if "trace" in report:
        _print_trace(report)


def _print_trace(report: dict) -> None:
    """The traced step's peak by part (beside the analytic model's) and the activations each layer held."""
    from rich.console import Console
    from rich.table import Table

    from fedsim.metrics.console import human_bytes

    tr, analytic = report["trace"], report.get("analytic_memory_breakdown", {})
    table = Table(title=f"traced step ({tr['seconds']:.1f} s to trace): peak {human_bytes(tr['peak_bytes'])} "
                        f"during {tr['peak_phase']}; {tr['flops']:.4g} FLOPs ({tr['forward_flops']:.4g} forward)")
    for col in ("part", "traced", "analytic"):
        table.add_column(col, justify="left" if col == "part" else "right")
    parts = list(dict.fromkeys([*tr["parts"], *(k for k in analytic if k != "overhead")]))
    for part in parts:
        table.add_row(part, human_bytes(tr["parts"].get(part, 0.0)), human_bytes(analytic.get(part, 0.0)))
    table.add_row("total (no overhead)", human_bytes(tr["peak_bytes"]),
                  human_bytes(sum(v for k, v in analytic.items() if k != "overhead")))
    layers = {k: v for k, v in tr["layers"].items() if k.startswith("layer ")}
    if layers:
        sizes = sorted(set(layers.values()))
        table.add_row("activations by layer", f"{len(layers)} layers, {human_bytes(sizes[0])}"
                      + (f" to {human_bytes(sizes[-1])}" if len(sizes) > 1 else " each"), "")
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fedsim` console script: user errors become one line and an exit code, not a traceback."""
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        return 2
    except RunAborted as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fedsim: interrupted", file=sys.stderr)
        return 130


def entry() -> int:
    """The `fedsim` console script (and `python -m fedsim`): `main`, and when the run killed its own local Ray
    (see fedsim.runtime.cluster.stop_local_ray) the process leaves at once, without Ray's exit handler, which
    would abort on the dead processes. Only here, never inside a caller's process that calls `main`."""
    _FAST_EXIT.append(True)
    try:
        code = main()
    except BaseException:
        if not _STOPPED_RAY:
            raise
        import traceback

        traceback.print_exc()
        code = 1
    if _STOPPED_RAY:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


_FAST_EXIT: list[bool] = []  # set by `entry`: this process is the CLI's own
_STOPPED_RAY: list[bool] = []


def _check_resume(args: argparse.Namespace) -> None:
    """`run --resume` continues the recorded config.yaml in place: options that would change either are refused."""
    if (args.scenario is None) == (args.resume is None):
        raise ConfigError("run", "give either a SCENARIO or --resume RUN_DIR")
    if args.resume is None:
        return
    for flag, given in (("--set", args.overrides), ("--out", args.out), ("--overwrite", args.overwrite)):
        if given:
            raise ConfigError(flag, "cannot be combined with --resume: a resumed run continues the recorded "
                                    "config.yaml in its own directory")


def _on_ray(fn, *args, **kwargs):
    """fn(*args, **kwargs) for a command that starts Ray; the CLI's own process then kills the local Ray at once
    (see `entry`)."""
    from fedsim.runtime.cluster import stop_local_ray

    try:
        return fn(*args, **kwargs)
    finally:
        if _FAST_EXIT and stop_local_ray():
            _STOPPED_RAY.append(True)


def _dispatch(args: argparse.Namespace) -> int:
    """Run one sub-command; returns its exit code."""
    if args.command in ("report", "compare"):
        from fedsim.report import compare, write_report

        print(write_report(args.run_dir) if args.command == "report" else compare(args.run_dirs, args.out))
        return 0
    if args.command == "validate":
        import yaml

        from fedsim.scenario import dump, load

        print(yaml.safe_dump(dump(load(args.scenario, args.overrides)), sort_keys=False), end="")
        print(f"fedsim: {args.scenario} is valid", file=sys.stderr)
        return 0
    if args.command == "cost":
        import json

        from fedsim.cost import client_cost
        from fedsim.scenario import load

        scenario = load(args.scenario, args.overrides)
        cost = (scenario, args.device, args.network, args.gpus, args.zero, args.offload)
        report = client_cost(*cost)  # every input checked (one line each) before a trace starts
        if args.trace:
            from fedsim.costs.traced import scenario_setup
            from fedsim.models.trace import trace

            traced = trace(scenario_setup(scenario))
            report = {**client_cost(*cost), "trace": traced.as_dict()}
        print(json.dumps(report, indent=2)) if args.json else _print_cost(report)
        return 0
    if args.command == "estimate":
        from fedsim.estimator import estimate

        result = estimate(args.scenario, args.overrides, args.out, overwrite=args.overwrite, quiet=args.quiet,
                          report=args.report)
        print(result.run_dir)
        return 0
    if args.command == "sweep":
        from fedsim.sweeps.runner import sweep

        result = _on_ray(sweep, args.sweep, args.overrides, args.out, overwrite=args.overwrite, quiet=args.quiet)
        print(result.out)
        return 0
    _check_resume(args)
    from fedsim.runtime.engine import run, start_report

    result = _on_ray(run, args.scenario, args.overrides, args.out, overwrite=args.overwrite, quiet=args.quiet,
                     resume=args.resume, stop_after=args.stop_after, report="off")
    start_report(result.run_dir, args.report)  # a detached process by default: the user is not held up
    print(result.run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

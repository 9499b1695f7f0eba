"""The `fedsim` command line: a thin layer over the Python API.

    fedsim run SCENARIO [--out DIR] [--set key=value ...]
    fedsim validate SCENARIO [--set key=value ...]

Configuration and usage errors print one line and exit with code 2; nothing already written is touched.
"""

from __future__ import annotations

import argparse
import sys

from fedsim.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedsim", description="Simulate federated fine-tuning of LLMs on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    def scenario_cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        c.add_argument("scenario", help="scenario YAML file")
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a scenario key, e.g. --set server.rounds=5 (repeatable; value parsed as YAML)")
        return c

    r = scenario_cmd("run", "train a federation and write its run directory")
    r.add_argument("--out", help="run directory (default runs/<scenario name>)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing non-empty run directory")
    r.add_argument("--quiet", action="store_true", help="no progress bar or summary table")
    scenario_cmd("validate", "check a scenario and print it fully resolved")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fedsim` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "validate":
            import yaml

            from fedsim.scenario import dump, load

            print(yaml.safe_dump(dump(load(args.scenario, args.overrides)), sort_keys=False), end="")
            print(f"fedsim: {args.scenario} is valid", file=sys.stderr)
            return 0
        from fedsim.runtime.engine import run

        result = run(args.scenario, args.overrides, args.out, overwrite=args.overwrite, quiet=args.quiet)
        print(result.run_dir)
        return 0
    except ConfigError as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

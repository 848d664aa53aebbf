"""`python -m gateway.sim`: the simulator alone, without the rest of the CLI."""

from __future__ import annotations

import argparse
import sys

from gateway.sim import cli


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.sim")
    cli.add_arguments(parser)
    return cli.run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())

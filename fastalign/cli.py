"""The `fastalign` command: `fastalign train [--config FILE] [--option value ...]`."""
from __future__ import annotations

import sys

USAGE = """usage: fastalign <command> [options]

commands:
  train        run online preference alignment (see `fastalign train --help`)
  extrapolate  ExPO: θ_sft + α(θ_aligned − θ_sft) as a new model (see `fastalign extrapolate --help`)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from .train import main as train_main

        return train_main(rest)
    if command == "extrapolate":
        from .extrapolate import main as extrapolate_main

        return extrapolate_main(rest)
    print(f"fastalign: error: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

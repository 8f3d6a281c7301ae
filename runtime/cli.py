"""The `varrt` command line."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("varrt: commands are being built", file=sys.stderr)
    return 2

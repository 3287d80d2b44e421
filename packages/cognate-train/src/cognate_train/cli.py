"""Command-line entry point (placeholder until the trainer lands)."""
import sys


def main(argv: list[str] | None = None) -> int:
    print("cognate-train: not implemented yet", file=sys.stderr)
    return 2

"""`python -m btbnet …`: the same command line as the `btbnet` console script."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

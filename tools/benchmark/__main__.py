"""``python -m tools.benchmark``: see :mod:`tools.benchmark`."""

from tools.benchmark.cli import main

if __name__ == "__main__":
    main()

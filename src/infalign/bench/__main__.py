"""``python -m infalign.bench``."""

from infalign.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m lape`` works like the ``lape`` command (and under ``torchrun -m lape``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m shapetrace``: the same as the ``shapetrace`` command."""

from shapetrace.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

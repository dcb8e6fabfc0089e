"""``python -m metakd``: the same as the ``metakd`` command."""

from metakd.cli import main

if __name__ == "__main__":
    main(prog_name="metakd")

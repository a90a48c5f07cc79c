"""`python -m training.align`: see `training.align.cli`."""

from training.align.cli import main


if __name__ == "__main__":
    main()

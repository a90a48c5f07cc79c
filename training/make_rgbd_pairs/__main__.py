"""`python -m training.make_rgbd_pairs`: see `training.make_rgbd_pairs.cli`."""

from training.make_rgbd_pairs.cli import main


if __name__ == "__main__":
    main()

"""python -m service.train --data data/kws12 --compressor diffres --rate 0.5 --out runs/X"""

import argparse

from service.train.config import add_arguments, config_from_args
from service.train.trainer import train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.train", description=__doc__)
    add_arguments(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue from <out>/checkpoint.pt when it exists")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="stop after this many more epochs (resume later with --resume)")
    args = parser.parse_args(argv)
    train(config_from_args(args), resume=args.resume, stop_after=args.stop_after)


if __name__ == "__main__":
    main()

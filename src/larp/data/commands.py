"""`larp prepare-data ucf101|k600|folder ...` and `larp synth-data OUT ...`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable


def _prepare_ucf101(args: argparse.Namespace) -> int:
    from larp.data.prepare import build_ucf101_csvs

    train, test = build_ucf101_csvs(
        args.root, args.split_dir, args.out, args.split, allow_missing=args.allow_missing
    )
    print(f"wrote {train}\nwrote {test}")
    return 0


def _prepare_k600(args: argparse.Namespace) -> int:
    from larp.data.prepare import build_k600_csvs

    for path in build_k600_csvs(args.root, args.annotations, args.out).values():
        print(f"wrote {path}")
    return 0


def _prepare_folder(args: argparse.Namespace) -> int:
    from larp.data.prepare import build_folder_csv

    print(f"wrote {build_folder_csv(args.root, args.out_csv)}")
    return 0


def _synth_data(args: argparse.Namespace) -> int:
    from larp.data.synthetic import write_synthetic_dataset

    paths = write_synthetic_dataset(
        args.out,
        classes=args.classes,
        clips_per_class=args.clips_per_class,
        frames=args.frames,
        size=args.size,
        seed=args.seed,
        val_fraction=args.val_fraction,
        fps=args.fps,
    )
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    return 0


def _with_logging(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Builders report counts (e.g. missing Kinetics clips) through logging; show them on the terminal."""

    def run(args: argparse.Namespace) -> int:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        return func(args)

    return run


def register(sub: argparse._SubParsersAction) -> None:
    """Add the data sub-commands."""
    prep = sub.add_parser("prepare-data", help="write metadata CSVs (id,path,action,label) for a dataset")
    kinds = prep.add_subparsers(dest="dataset", required=True)  # argparse lists the kinds on error

    ucf = kinds.add_parser("ucf101", help="UCF-101 from its official split files")
    ucf.add_argument("root", help="folder holding the 101 class folders (ApplyEyeMakeup/...)")
    ucf.add_argument("split_dir", help="folder with classInd.txt, trainlist0N.txt, testlist0N.txt")
    ucf.add_argument("out", help="output folder for ucf101_train{N}.csv and ucf101_test{N}.csv")
    ucf.add_argument("--split", type=int, default=1, choices=(1, 2, 3))
    ucf.add_argument("--allow-missing", action="store_true", help="drop listed videos that are absent")
    ucf.set_defaults(func=_with_logging(_prepare_ucf101))

    k600 = kinds.add_parser("k600", help="Kinetics-600 from its annotation CSVs")
    k600.add_argument("root", help="folder holding the downloaded clips (any layout)")
    k600.add_argument("annotations", help="folder with the annotation CSVs (train.csv, validate.csv, ...)")
    k600.add_argument("out", help="output folder for k600_<split>.csv")
    k600.set_defaults(func=_with_logging(_prepare_k600))

    folder = kinds.add_parser("folder", help="any folder with one sub-folder of videos per class")
    folder.add_argument("root")
    folder.add_argument("out_csv")
    folder.set_defaults(func=_with_logging(_prepare_folder))

    synth = sub.add_parser("synth-data", help="write the synthetic dataset (mp4 clips + train/val CSVs)")
    synth.add_argument("out", help="output folder")
    synth.add_argument("--classes", type=int, default=10)
    synth.add_argument("--clips-per-class", type=int, default=64)
    synth.add_argument("--frames", type=int, default=16)
    synth.add_argument("--size", type=int, default=64)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--val-fraction", type=float, default=0.25)
    synth.add_argument("--fps", type=float, default=8)
    synth.set_defaults(func=_synth_data)

"""`larp prepare-data ucf101|k600|folder ...`, `larp synth-data [-o] OUT ...` and `larp data check CSV ...`."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from larp.utils import cli as opts
from larp.utils.errors import LarpError


def _refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """The files a command is about to write must not exist, unless --overwrite."""
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise LarpError(f"{', '.join(existing)} exist(s) already; pass --overwrite to replace")


def _prepare_ucf101(args: argparse.Namespace) -> int:
    from larp.data.prepare import build_ucf101_csvs

    out = Path(args.out)
    _refuse_existing([out / f"ucf101_{s}{args.split}.csv" for s in ("train", "test")], args.overwrite)
    train, test = build_ucf101_csvs(
        args.root, args.split_dir, args.out, args.split, allow_missing=args.allow_missing
    )
    print(f"wrote {train}\nwrote {test}")
    return 0


def _prepare_k600(args: argparse.Namespace) -> int:
    from larp.data.prepare import build_k600_csvs

    out = Path(args.out)
    _refuse_existing([out / f"k600_{a.stem}.csv" for a in sorted(Path(args.annotations).glob("*.csv"))],
                     args.overwrite)
    for path in build_k600_csvs(args.root, args.annotations, args.out).values():
        print(f"wrote {path}")
    return 0


def _prepare_folder(args: argparse.Namespace) -> int:
    from larp.data.prepare import build_folder_csv

    _refuse_existing([Path(args.out_csv)], args.overwrite)
    print(f"wrote {build_folder_csv(args.root, args.out_csv)}")
    return 0


def _synth_data(args: argparse.Namespace) -> int:
    from larp.data.synthetic import write_synthetic_dataset
    from larp.utils.budget import check_budget, check_memory

    if args.out and args.out_folder and args.out != args.out_folder:
        raise ValueError(f"two output folders given ({args.out_folder} and -o {args.out}); give one")
    out = Path(args.out or args.out_folder or "")
    if not str(out) or str(out) == ".":
        raise ValueError("no output folder: larp synth-data OUT (or -o OUT)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; the synthetic dataset needs a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise LarpError(f"{out} is not empty; pass --overwrite to write the dataset into it anyway")
    # Budgets before any work: one clip is made in memory (float32 frames), the dataset is written to disk.
    check_budget(f"the frame size ({args.size}x{args.size}, in pixels)", args.size * args.size,
                 args.max_frame_pixels, "--max_frame_pixels")
    check_budget("the number of frames of a clip", args.frames, args.max_frames, "--max_frames")
    check_memory(f"one clip of {args.frames} frames of {args.size}x{args.size}",
                 args.frames * args.size * args.size * 3 * 4, args.max_memory_mb)
    check_budget(f"the dataset's number of frames ({args.classes} classes x {args.clips_per_class} clips x "
                 f"{args.frames} frames)", args.classes * args.clips_per_class * args.frames, args.max_frames,
                 "--max_frames")
    paths = write_synthetic_dataset(
        out,
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


def _data_check(args: argparse.Namespace) -> int:
    from larp.data.check import DataCheckError, run_check
    from larp.data.check_report import format_report, summary_line
    from larp.utils.errors import one_line

    try:
        report = run_check(args.csvs, args.out, workers=args.workers, min_per_class=args.min_per_class,
                           near_threshold=args.near_threshold, write_clean=args.write_clean,
                           overwrite=args.overwrite)
    except (LarpError, ValueError, OSError) as exc:
        if isinstance(exc, DataCheckError):
            raise
        # Exit status 1 means "problems found": a check that could not run (an unwritable --out...) exits 2.
        raise DataCheckError(one_line(exc)) from exc
    print(format_report(report, show=args.show))
    print()
    print(f"manifest {report['manifest']['path']} (sha256 {report['manifest']['sha256']})")
    if "clean" in report:
        for item in report["clean"]["lists"]:
            print(f"wrote {item['csv']}: {item['kept']} videos kept, {len(item['removed'])} removed")
        clean = report["clean"]["manifest"]
        print(f"manifest of the cleaned lists {clean['path']} (sha256 {clean['sha256']})")
    print(summary_line(report, str(Path(args.out) / "check.json")))
    return 1 if any(report["counts"].values()) else 0


DATA_CHECK_DESCRIPTION = """\
Check what the videos of dataset CSVs (id,path,action,label, as `larp prepare-data` writes them) hold:
each video's presence, whether it decodes to its last frame, its frames, frame rate, size and duration,
its file SHA-256 and a content hash of its decoded frames; across the lists, missing and unreadable
videos, identical and near-duplicate videos within and across lists, UCF-101 groups and YouTube ids
found in two lists, class balance and classes with too few clips. Give the lists in order (train, then
val, then test): --write_clean drops from the later lists what repeats an earlier one. Writes
OUT/check.json (everything), OUT/manifest.json (the files, whose SHA-256 `larp eval tokenizer --manifest`
and `larp sample --manifest` record) and OUT/cache.jsonl (per-file results: a re-run probes only new or
changed files). Exit status: 0 clean, 1 problems found, 2 the check could not run."""


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
    opts.add_option(ucf, "split", type=int, default=1, choices=(1, 2, 3), help="the official split")
    opts.add_option(ucf, "allow_missing", action="store_true",
                    help="drop listed videos that are absent (default: an absent video is an error)")
    opts.add_overwrite(ucf)
    ucf.set_defaults(func=_with_logging(_prepare_ucf101))

    k600 = kinds.add_parser("k600", help="Kinetics-600 from its annotation CSVs")
    k600.add_argument("root", help="folder holding the downloaded clips (any layout)")
    k600.add_argument("annotations", help="folder with the annotation CSVs (train.csv, validate.csv, ...)")
    k600.add_argument("out", help="output folder for k600_<split>.csv")
    opts.add_overwrite(k600)
    k600.set_defaults(func=_with_logging(_prepare_k600))

    folder = kinds.add_parser("folder", help="any folder with one sub-folder of videos per class")
    folder.add_argument("root", help="folder with one sub-folder of videos per class (labels: sorted names)")
    folder.add_argument("out_csv", help="the CSV to write")
    opts.add_overwrite(folder)
    folder.set_defaults(func=_with_logging(_prepare_folder))

    data = sub.add_parser("data", help="check what the videos of dataset CSVs hold (see `larp data check -h`)")
    data_kinds = data.add_subparsers(dest="data_command", metavar="WHAT", required=True)
    check = data_kinds.add_parser("check", help="what the videos of dataset CSVs hold: missing, unreadable, "
                                                "duplicated or leaking videos, class balance",
                                  description=DATA_CHECK_DESCRIPTION,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("csvs", nargs="+", metavar="CSV", help="metadata CSVs, in order: train, val, test")
    opts.add_output(check, required=False, default="data_check", metavar="FOLDER",
                    help="folder for check.json, manifest.json and the cache of per-file results")
    opts.add_option(check, "workers", type=opts.positive_int, default=None,
                    help="processes decoding videos (default: one per CPU core this process may use)")
    opts.add_option(check, "min_per_class", type=opts.non_negative_int, default=10,
                    help="fewer usable clips of a class in a list is a problem (0: no minimum)")
    opts.add_option(check, "near_threshold", type=opts.non_negative_int, default=24,
                    help="content hashes (256 bits) differing in at most this many bits are near duplicates")
    opts.add_option(check, "write_clean", default=None, metavar="DIR",
                    help="also write the CSVs without missing, unreadable and repeated videos, and their "
                         "manifest, to DIR (default: none)")
    opts.add_option(check, "show", type=opts.non_negative_int, default=10,
                    help="examples shown per kind of problem (check.json lists all)")
    opts.add_overwrite(check, help="replace cleaned CSVs that exist already in --write_clean DIR")
    check.set_defaults(func=_data_check)

    synth = sub.add_parser("synth-data", help="write the synthetic dataset (mp4 clips + train/val CSVs)",
                           description="Write the synthetic dataset: classes of coloured shapes moving over a "
                                       "textured background, as mp4 clips under OUT/videos/ with "
                                       "OUT/train.csv and OUT/val.csv.")
    synth.add_argument("out_folder", nargs="?", metavar="OUT", help="output folder (or -o OUT)")
    opts.add_output(synth, required=False, help="output folder (the same as OUT; default: OUT)")
    opts.add_option(synth, "classes", type=opts.positive_int, default=10, help="number of classes")
    opts.add_option(synth, "clips_per_class", type=opts.positive_int, default=64, help="clips per class")
    opts.add_option(synth, "frames", type=opts.positive_int, default=16, help="frames per clip")
    opts.add_option(synth, "size", type=opts.positive_int, default=64, help="frame width and height")
    opts.add_seed(synth, help="seed of the clips (clip i of class k: seed sequence (seed, k, i))")
    opts.add_option(synth, "val_fraction", type=opts.fraction, default=0.25,
                    help="fraction of each class's clips that form the validation split")
    opts.add_option(synth, "fps", type=opts.positive_float, default=8, help="frame rate of the mp4 files")
    opts.add_overwrite(synth)
    opts.add_frame_budgets(synth)
    opts.add_memory_budget(synth)
    synth.set_defaults(func=_synth_data)

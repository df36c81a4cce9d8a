"""`larp train tokenizer|ar --config RECIPE.yaml [key=value ...] [--resume | --overwrite | --print-config]`
and `larp tokenize-dataset`.

Light at import (argparse only): torch and the models load when a command runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from larp.utils import cli as opts


def _load(args: argparse.Namespace):
    from larp.train.config import ARTrainConfig, TokenizerTrainConfig, load_recipe

    cls = TokenizerTrainConfig if args.what == "tokenizer" else ARTrainConfig
    overrides = list(args.overrides or [])
    if args.out:
        overrides.append(f"run.out_dir={json.dumps(args.out)}")  # JSON quoting is valid YAML
    if getattr(args, "threads", None):  # `--threads` over the recipe's run.threads
        overrides.append(f"run.threads={args.threads}")
    return load_recipe(cls, args.config, overrides)


def _train(args: argparse.Namespace) -> int:
    recipe = _load(args)
    if args.print_config:
        import yaml

        from larp.utils.config import to_dict

        print(yaml.safe_dump(to_dict(recipe), sort_keys=False), end="")
        return 0
    from larp.train.run import train

    if args.what == "tokenizer":
        from larp.train.tokenizer_task import TokenizerTask as task_cls
    else:
        from larp.train.ar_task import ARTask as task_cls
    metrics = train(recipe, task_cls, resume=args.resume, overwrite=args.overwrite)
    if metrics:
        print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return 0


def _clear_token_cache(out: Path, overwrite: bool, dry_run: bool = False) -> None:
    """An existing cache in `out` is refused, or with --overwrite removed (its meta.json first, so an
    interruption never leaves something that looks like a complete cache)."""
    from larp.train.token_cache import META
    from larp.utils.errors import LarpError

    meta = out / META
    if not meta.exists():
        return
    if not overwrite:
        raise LarpError(f"{out} holds a token cache already; pass --overwrite to replace it")
    if dry_run:
        return
    meta.unlink()
    for shard in out.glob("shard_*.safetensors"):
        shard.unlink()


def _tokenize_dataset(args: argparse.Namespace) -> int:
    from larp.data.datasets import VideoCSVDataset
    from larp.models.tokenizer import LARPTokenizer
    from larp.train.token_cache import build_token_cache
    from larp.utils.device import resolve_device
    from larp.utils.outputs import exclusive_output

    out = Path(args.out)
    with exclusive_output(out, "tokenize-dataset"):  # a second build into the folder stops here
        _clear_token_cache(out, args.overwrite, dry_run=True)  # refused before the tokenizer is loaded
        device = resolve_device(args.device)
        tokenizer = LARPTokenizer.from_pretrained(args.tokenizer)
        c, t, h, w = tokenizer.video_shape
        dataset = VideoCSVDataset(args.dataset_csv, num_frames=t, size=h, train=False, seed=args.seed)
        _clear_token_cache(out, args.overwrite)
        meta = build_token_cache(tokenizer, dataset, out, tokenizer_id=args.tokenizer,
                                 windows_per_video=args.windows_per_video, flip=not args.no_flip, seed=args.seed,
                                 fp_context_frames=args.fp_context_frames, batch_size=args.batch_size,
                                 shard_size=args.shard_size, device=device)
    print(f"wrote {meta.num_entries} entries in {len(meta.shards)} shard(s) to {out}"
          + (f"; skipped {len(meta.skipped_videos)} unreadable video(s), listed in meta.json"
             if meta.skipped_videos else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a tokenizer or an AR model from a YAML recipe",
                       description="Train from a YAML recipe (configs/*.yaml). Extra key=value arguments override "
                                   "recipe entries, e.g. run.max_steps=100 optim.lr=3e-4 (an unknown key is an "
                                   "error that suggests the closest one). Under torchrun the same command trains "
                                   "with DistributedDataParallel.")
    p.add_argument("what", choices=["tokenizer", "ar"], help="what to train")
    opts.add_option(p, "config", required=True, metavar="RECIPE.yaml", help="YAML recipe")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    opts.add_output(p, required=False, metavar="FOLDER",
                    help="run folder (default: the recipe's run.out_dir)")
    group = p.add_mutually_exclusive_group()
    opts.add_option(group, "resume", action="store_true", help="continue from the run folder's latest checkpoint")
    opts.add_overwrite(group, help="delete an existing run in the folder first")
    opts.add_option(group, "print_config", action="store_true",
                    help="print the resolved recipe (YAML, overrides applied) and exit without training")
    p.set_defaults(func=_train)

    p = sub.add_parser("tokenize-dataset", help="encode a dataset once into a token cache for AR training",
                       description="Encode seeded clip windows of every video of a metadata CSV (and their "
                                   "mirror images) with a frozen tokenizer into sharded token files.")
    opts.add_tokenizer(p)
    opts.add_dataset_csv(p)
    opts.add_output(p, metavar="FOLDER", help="output folder of the token cache")
    opts.add_option(p, "windows_per_video", type=opts.positive_int, default=1,
                    help="seeded clip windows per video, each distinct start once")
    opts.add_option(p, "no_flip", action="store_true", help="do not add horizontally flipped copies")
    opts.add_option(p, "fp_context_frames", type=opts.non_negative_int, default=0,
                    help="also store the frame-prediction condition of this many context frames (e.g. 5; "
                         "0: none)")
    opts.add_batch_size(p, 8)
    opts.add_option(p, "shard_size", type=opts.positive_int, default=4096, help="entries per shard file")
    opts.add_seed(p, help="seed of the clip windows")
    opts.add_device(p)
    opts.add_overwrite(p, help="replace a token cache that the folder holds already")
    p.set_defaults(func=_tokenize_dataset)

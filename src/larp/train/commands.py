"""`larp train tokenizer|ar --config RECIPE.yaml [key=value ...] [--resume | --overwrite]`."""

from __future__ import annotations

import argparse


def _train(args: argparse.Namespace) -> int:
    from larp.train.config import TokenizerTrainConfig, load_recipe
    from larp.train.run import train

    if args.what == "tokenizer":
        from larp.train.tokenizer_task import TokenizerTask

        recipe = load_recipe(TokenizerTrainConfig, args.config, args.overrides)
        task_cls = TokenizerTask
    else:
        from larp.train.ar_task import ARTask
        from larp.train.config import ARTrainConfig

        recipe = load_recipe(ARTrainConfig, args.config, args.overrides)
        task_cls = ARTask
    if args.out:
        recipe.run.out_dir = args.out
    metrics = train(recipe, task_cls, resume=args.resume, overwrite=args.overwrite)
    if metrics:
        print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return 0


def _tokenize_dataset(args: argparse.Namespace) -> int:
    from larp.data.datasets import VideoCSVDataset
    from larp.models.tokenizer import LARPTokenizer
    from larp.train.token_cache import build_token_cache

    tokenizer = LARPTokenizer.from_pretrained(args.tokenizer)
    c, t, h, w = tokenizer.video_shape
    dataset = VideoCSVDataset(args.dataset_csv, num_frames=t, size=h, train=False, seed=args.seed)
    meta = build_token_cache(tokenizer, dataset, args.out, tokenizer_id=args.tokenizer,
                             windows_per_video=args.windows_per_video, flip=not args.no_flip, seed=args.seed,
                             fp_context_frames=args.fp_context_frames, batch_size=args.batch_size,
                             shard_size=args.shard_size, device=args.device)
    print(f"wrote {meta.num_entries} entries in {len(meta.shards)} shard(s) to {args.out}"
          + (f"; skipped {len(meta.skipped_videos)} unreadable video(s), listed in meta.json"
             if meta.skipped_videos else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a tokenizer or an AR model from a YAML recipe",
                       description="Train from a YAML recipe (configs/*.yaml). Extra key=value arguments override "
                                   "recipe entries, e.g. run.max_steps=100 optim.lr=3e-4. Under torchrun the "
                                   "same command trains with DistributedDataParallel.")
    p.add_argument("what", choices=["tokenizer", "ar"], help="what to train")
    p.add_argument("--config", required=True, help="YAML recipe")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    p.add_argument("--out", help="run folder (overrides run.out_dir)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    group.add_argument("--overwrite", action="store_true", help="delete an existing run in the folder first")
    p.set_defaults(func=_train)

    p = sub.add_parser("tokenize-dataset", help="encode a dataset once into a token cache for AR training",
                       description="Encode seeded clip windows of every video of a metadata CSV (and their "
                                   "mirror images) with a frozen tokenizer into sharded token files.")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder or Hugging Face repo id")
    p.add_argument("--dataset_csv", "--dataset-csv", required=True, help="metadata CSV id,path,action,label")
    p.add_argument("--out", required=True, help="output folder (must not hold a cache already)")
    p.add_argument("--windows_per_video", "--windows-per-video", type=int, default=1,
                   help="seeded clip windows per video, each distinct start once (default 1)")
    p.add_argument("--no_flip", "--no-flip", action="store_true", help="do not add horizontally flipped copies")
    p.add_argument("--fp_context_frames", "--fp-context-frames", type=int, default=0,
                   help="also store the frame-prediction condition of this many context frames (e.g. 5)")
    p.add_argument("--batch_size", "--batch-size", type=int, default=8)
    p.add_argument("--shard_size", "--shard-size", type=int, default=4096, help="entries per shard file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_tokenize_dataset)

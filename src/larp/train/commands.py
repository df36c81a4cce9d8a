"""`larp train tokenizer|ar --config RECIPE.yaml [key=value ...] [--resume | --overwrite]`."""

from __future__ import annotations

import argparse


def _train(args: argparse.Namespace) -> int:
    from .config import TokenizerTrainConfig, load_recipe
    from .run import train

    if args.what == "tokenizer":
        from .tokenizer_task import TokenizerTask

        recipe = load_recipe(TokenizerTrainConfig, args.config, args.overrides)
        task_cls = TokenizerTask
    else:
        from .ar_task import ARTask
        from .config import ARTrainConfig

        recipe = load_recipe(ARTrainConfig, args.config, args.overrides)
        task_cls = ARTask
    if args.out:
        recipe.run.out_dir = args.out
    metrics = train(recipe, task_cls, resume=args.resume, overwrite=args.overwrite)
    if metrics:
        print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
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

"""`larp sample`: the reference release's `sample.py` command line (underscore names, hyphenated aliases)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from larp.eval.fvd import ENV_I3D_PATH, DetectorError
from larp.utils.errors import CheckpointError

# Errors that describe bad input; the command prints them without a traceback.
USER_ERRORS = (DetectorError, CheckpointError, FileNotFoundError, ValueError)

DESCRIPTION = """\
Sample videos with a LARP AR model and decode them with its tokenizer, as the reference release's
sample.py does. Sample i follows real clip i, drawn (seeded by --dataset_split_seed) among the
non-overlapping clips of the --dataset_csv videos as in the paper's gFVD protocol: the clip gives the
class label (class-conditional) or the first --num_cond_frames context frames (--fp), and is the real
sample of the FVD. A job of --num_samples_total samples can run as shards [--starting_index,
--starting_index + --num_samples), in any order or in parallel, with the same settings and
--output_dir; a finished shard is skipped on a re-run, and the last shard to finish merges the
statistics and appends the FVD to OUTPUT_DIR/fvd_report.csv, once."""


def _option(parser: argparse.ArgumentParser, name: str, *aliases: str, **kwargs) -> None:
    """`--name`, its hyphenated spelling and any reference alias (`--ns`, `--cs`, `--fp`)."""
    spellings = [f"--{name}"]
    if "_" in name:
        spellings.append(f"--{name.replace('_', '-')}")
    parser.add_argument(*spellings, *aliases, dest=name, **kwargs)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample videos with an AR model (class-conditional or --fp), with FVD",
                       description=DESCRIPTION, allow_abbrev=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _option(p, "ar_model", required=True, help="AR model folder or Hugging Face repo id")
    _option(p, "tokenizer", required=True, help="tokenizer folder or Hugging Face repo id")
    _option(p, "output_dir", required=True, help="the job's folder, shared by all its shards")
    _option(p, "dataset_csv", required=True, help="metadata CSV (id,path,action,label) of the real videos")
    _option(p, "num_samples", "--ns", type=int, default=1024, help="samples in this shard (default 1024)")
    _option(p, "num_samples_total", type=int, default=None,
            help="samples in the whole job (default: --num_samples, i.e. one shard)")
    _option(p, "starting_index", type=int, default=0, help="first sample of this shard (default 0)")
    _option(p, "sample_batch_size", type=int, default=32,
            help="batch size; part of the job's identity, since batch k is seeded from (seed, k * size)")
    _option(p, "cfg_scale", "--cs", type=float, default=1.0, help="classifier-free guidance scale (UCF: 1.25)")
    _option(p, "cfg_interval", type=int, default=-1,
            help="guide only the first tokens up to this one (-1: all tokens)")
    _option(p, "temperature", type=float, default=1.0)
    _option(p, "top_k", type=int, default=0, help="keep the k most likely tokens (0: all)")
    _option(p, "top_p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    _option(p, "dtype", choices=["float32", "bfloat16"], default=None,
            help="AR model precision (autocast); default bfloat16 on CUDA, float32 on CPU. The tokenizer runs "
                 "in float32")
    _option(p, "dataset_split_seed", type=int, default=42, help="seed of the real-clip draw (default 42)")
    _option(p, "fp", "--frame_prediction", "--frame-prediction", action="store_true",
            help="frame prediction: condition on the tokens of each real clip's first --num_cond_frames frames")
    _option(p, "num_cond_frames", type=int, default=None, help="context frames for --fp (released setup: 5)")
    _option(p, "seed", type=int, default=0, help="sampling seed (default 0)")
    _option(p, "device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    _option(p, "i3d_path", default=None,
            help=f"the I3D detector file (default: ${ENV_I3D_PATH}, then the cache, then a verified download)")
    _option(p, "no_fvd", action="store_true", help="write samples only: no detector, no statistics, no FVD")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from larp.sample.job import SampleConfig

    return SampleConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SampleConfig)})


def run(args: argparse.Namespace) -> int:
    from larp.sample.job import run_sample_job

    try:
        result = run_sample_job(config_from_args(args))
    except USER_ERRORS as exc:
        print(f"larp sample: error: {exc}", file=sys.stderr)
        return 1
    print(result["shard"])
    print(result["merge"])
    return 0

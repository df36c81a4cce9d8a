"""`larp sample`: the reference release's `sample.py` command line (underscore names, hyphenated aliases)."""

from __future__ import annotations

import argparse
import dataclasses

from larp.eval.commands import ENV_I3D_PATH
from larp.utils import cli as opts

DESCRIPTION = """\
Sample videos with a LARP AR model and decode them with its tokenizer, as the reference release's
sample.py does. Sample i follows real clip i, drawn (seeded by --dataset_split_seed) among the
non-overlapping clips of the --dataset_csv videos as in the paper's gFVD protocol: the clip gives the
class label (class-conditional) or the first --num_cond_frames context frames (--fp), and is the real
sample of the FVD. A job of --num_samples_total samples can run as shards [--starting_index,
--starting_index + --num_samples), in any order or in parallel, with the same settings and
--output_dir; a finished shard is skipped on a re-run, and the last shard to finish merges the
statistics and appends the FVD to OUTPUT_DIR/fvd_report.csv, once."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample videos with an AR model (class-conditional or --fp), with FVD",
                       description=DESCRIPTION, allow_abbrev=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    opts.add_ar_model(p)
    opts.add_tokenizer(p)
    opts.add_option(p, "output_dir", "-o", "--out", required=True, metavar="FOLDER",
                    help="the job's folder, shared by all its shards (a re-run skips finished shards)")
    opts.add_dataset_csv(p, help="metadata CSV (id,path,action,label) of the real videos")
    opts.add_option(p, "num_samples", "--ns", type=opts.positive_int, default=1024, help="samples in this shard")
    opts.add_option(p, "num_samples_total", type=opts.positive_int, default=None,
                    help="samples in the whole job (default: --num_samples, i.e. one shard)")
    opts.add_option(p, "starting_index", type=opts.non_negative_int, default=0, help="first sample of this shard")
    opts.add_option(p, "sample_batch_size", type=opts.positive_int, default=32,
                    help="batch size; part of the job's identity, since batch k is seeded from (seed, k * size)")
    opts.add_option(p, "cfg_scale", "--cs", type=opts.non_negative_float, default=1.0,
                    help="classifier-free guidance scale, 1: off (UCF-101 protocol: 1.25)")
    opts.add_option(p, "cfg_interval", type=int, default=-1,
                    help="guide only the first tokens up to this one (-1: all tokens)")
    opts.add_option(p, "temperature", type=opts.positive_float, default=1.0, help="sampling temperature")
    opts.add_option(p, "top_k", type=opts.non_negative_int, default=0, help="keep the k most likely tokens (0: all)")
    opts.add_option(p, "top_p", type=opts.probability, default=1.0, help="nucleus sampling mass (1: off)")
    opts.add_dtype(p, default=None, choices=("float32", "bfloat16"),
                   help="AR model precision (autocast) (default: bfloat16 on CUDA, float32 on CPU); the "
                        "tokenizer runs in float32")
    opts.add_option(p, "dataset_split_seed", type=int, default=42, help="seed of the real-clip draw")
    opts.add_option(p, "fp", "--frame_prediction", action="store_true",
                    help="frame prediction: condition on the tokens of each real clip's first --num_cond_frames "
                         "frames")
    opts.add_option(p, "num_cond_frames", type=opts.positive_int, default=None,
                    help="context frames for --fp (default: none; the released setup: 5)")
    opts.add_seed(p, help="sampling seed")
    opts.add_device(p)
    opts.add_option(p, "i3d_path", default=None, metavar="FILE",
                    help=f"the I3D detector file (default: ${ENV_I3D_PATH}, then ~/.cache/larp/"
                         "i3d_torchscript.pt, then a verified download)")
    opts.add_option(p, "no_fvd", action="store_true", help="write samples only: no detector, no statistics, no FVD")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from larp.sample.job import SampleConfig

    return SampleConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SampleConfig)})


def run(args: argparse.Namespace) -> int:
    from larp.sample.job import run_sample_job

    result = run_sample_job(config_from_args(args))
    print(result["shard"])
    print(result["merge"])
    return 0

"""`larp sample`: the reference release's `sample.py` command line (underscore names, hyphenated aliases);
`larp generate`: videos from models alone."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from larp.eval.commands import ENV_I3D_PATH
from larp.sample.defaults import DEFAULT_CFG_SCALE, DEFAULT_COND_FRAMES
from larp.utils import budget
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
    opts.add_option(p, "sample_batch_size", "--batch_size", type=opts.positive_int, default=32,
                    help="samples per batch; part of the job's identity, since batch k is seeded from (seed, k * size)")
    opts.add_option(p, "cfg_scale", "--cs", type=opts.non_negative_float, default=None,
                    help=f"classifier-free guidance scale, 1: off (default: {DEFAULT_CFG_SCALE}, the UCF-101 "
                         "protocol's; 1 with --fp)")
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
                    help=f"context frames for --fp (default: {DEFAULT_COND_FRAMES}, the released setup)")
    opts.add_seed(p, help="sampling seed")
    opts.add_device(p)
    opts.add_option(p, "i3d_path", default=None, metavar="FILE",
                    help=f"the I3D detector file (default: ${ENV_I3D_PATH}, then ~/.cache/larp/"
                         "i3d_torchscript.pt, then a verified download)")
    opts.add_option(p, "no_fvd", action="store_true", help="write samples only: no detector, no statistics, no FVD")
    opts.add_option(p, "manifest", default=None, metavar="FILE",
                    help="the manifest.json of `larp data check`: --dataset_csv must be one of its lists, and "
                         "its SHA-256 is part of the job and of fvd.json (default: none)")
    opts.add_overwrite(p, help="replace a job with other settings in --output_dir (what it wrote is removed; "
                               "a job with the same settings resumes either way)")
    p.set_defaults(func=run)
    register_generate(sub)


GENERATE_DESCRIPTION = """\
Generate videos with a tokenizer and AR model(s), with no dataset CSV and no FVD (`larp sample` is the
protocol job). Class-conditional: --num_videos clips of --class_id with --ar_model, written as
OUT/class{K}_{i}.mp4. Frame prediction (--frame_prediction): one continuous video of --num_frames
frames per --num_videos, OUT/long_{i}.mp4, continuing the first clip of --context VIDEO (or a
class-conditional sample of --ar_model --class_id): --fp_model repeatedly predicts a clip from the last
--num_cond_frames frames and its new frames are appended. OUT/generate.json records the settings."""


def register_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate videos of a class, or a long continuation (--frame_prediction)",
                       description=GENERATE_DESCRIPTION, allow_abbrev=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    opts.add_tokenizer(p)
    opts.add_output(p, help="folder for the mp4 files and generate.json", metavar="FOLDER")
    opts.add_ar_model(p, required=False, help="a class-conditional AR model folder or Hugging Face repo id (default: none; needed for class "
                              "samples and to start --frame_prediction from one)")
    opts.add_option(p, "fp_model", default=None, metavar="FP_MODEL",
                    help="a frame-prediction AR model folder or Hugging Face repo id (default: none; needed by "
                         "--frame_prediction)")
    opts.add_option(p, "frame_prediction", "--fp", action="store_true",
                    help="write a long video by chained frame prediction")
    opts.add_option(p, "class_id", type=opts.non_negative_int, default=None,
                    help="the class to sample with --ar_model (default: none; required with it)")
    opts.add_option(p, "context", default=None, metavar="VIDEO",
                    help="--frame_prediction: the video whose first clip the long video continues (default: none; "
                         "else a class-conditional sample starts it)")
    opts.add_option(p, "num_frames", type=opts.positive_int, default=None,
                    help="--frame_prediction: frames of each long video (default: none; required with it)")
    opts.add_option(p, "num_cond_frames", type=opts.positive_int, default=DEFAULT_COND_FRAMES,
                    help="--frame_prediction: context frames of each prediction, as the model was trained")
    opts.add_option(p, "num_videos", type=opts.positive_int, default=1, help="videos to generate (one batch)")
    opts.add_option(p, "cfg_scale", "--cs", type=opts.non_negative_float, default=DEFAULT_CFG_SCALE,
                    help="classifier-free guidance scale of the class-conditional model, 1: off")
    opts.add_option(p, "cfg_interval", type=int, default=-1,
                    help="guide only the first tokens up to this one (-1: all tokens)")
    opts.add_option(p, "temperature", type=opts.positive_float, default=1.0, help="sampling temperature")
    opts.add_option(p, "top_k", type=opts.non_negative_int, default=0, help="keep the k most likely tokens (0: all)")
    opts.add_option(p, "top_p", type=opts.probability, default=1.0, help="nucleus sampling mass (1: off)")
    opts.add_seed(p, help="sampling seed")
    opts.add_option(p, "fps", type=opts.positive_float, default=8.0, help="frame rate of the mp4 files")
    opts.add_device(p)
    opts.add_dtype(p, default=None, choices=("float32", "bfloat16"),
                   help="AR model precision (default: bfloat16 on CUDA, float32 on CPU); the tokenizer runs in "
                        "float32")
    opts.add_option(p, "compile", action="store_true",
                    help="compile the decode step with torch.compile (pays off for long or many videos)")
    opts.add_overwrite(p)
    opts.add_option(p, "max_frames", type=opts.positive_int, default=budget.DEFAULT_MAX_FRAMES,
                    help="refuse a --num_frames above this before any work")
    opts.add_memory_budget(p)
    p.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from larp.sample.generate_cli import GenerateConfig, run_generate

    cfg = GenerateConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GenerateConfig)})
    record = run_generate(cfg)
    for video in record["videos"]:
        print(Path(cfg.out) / video["file"])
    return 0


def config_from_args(args: argparse.Namespace):
    from larp.sample.job import SampleConfig

    return SampleConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SampleConfig)})


def run(args: argparse.Namespace) -> int:
    from larp.sample.job import run_sample_job

    result = run_sample_job(config_from_args(args))
    print(result["shard"])
    print(result["merge"])
    return 0

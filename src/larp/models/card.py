"""The model card (`README.md`) that `save_pretrained` writes next to `config.json` and `model.safetensors`.

Built with `huggingface_hub`'s card API: the YAML header (`ModelCardData`: library, license, tags, metric
names) is what the hub reads; the body says what the model is and how to load it, how it was trained (the
resolved recipe, its SHA-256, the steps and the data), its figures, its intended use and limits, the license
and the paper."""

from __future__ import annotations

import json
import math
from typing import Any

PAPER_URL = "https://arxiv.org/abs/2410.21264"
PAPER_TAG = "arxiv:2410.21264"
BIBTEX = """@inproceedings{wang2025larp,
  title         = {{LARP}: Tokenizing Videos with a Learned Autoregressive Generative Prior},
  author        = {Wang, Hanyu and Suri, Saksham and Ren, Yixuan and Chen, Hao and Shrivastava, Abhinav},
  booktitle     = {International Conference on Learning Representations (ICLR)},
  year          = {2025},
  eprint        = {2410.21264},
  archivePrefix = {arXiv}
}"""

_KINDS = {
    "LARPTokenizer": ("LARP video tokenizer", ["video-tokenizer"]),
    "LARPAR": ("LARP autoregressive video generator", ["video-generation"]),
}
_USES = {
    "LARPTokenizer": "Turning video clips into discrete tokens and back: compression, reconstruction, and "
                     "the tokens an autoregressive model is trained on.",
    "LARPAR": "Generating the tokens of new clips (of a class, or continuing given frames), which the "
              "tokenizer it was trained with decodes into video.",
}
# Facts of `training`, in the order shown: key -> label.
_TRAINING = {"steps": "Optimiser steps", "effective_batch": "Effective batch",
             "train_data": "Training data", "val_data": "Validation data", "tokenizer": "Tokenizer",
             "init_from": "Started from", "recipe_file": "Recipe file", "recipe_sha256": "Recipe SHA-256",
             "final_train_loss": "Training loss at the last logged step"}


def _summary(class_name: str, config: dict[str, Any]) -> str:
    """One sentence on the model's shapes, from the released config keys when they are there."""
    try:
        if class_name == "LARPTokenizer":
            codes = config["bottleneck"]["args"]["regularizer"]["args"]["codebook_size"]
            return (f"Clips of {config['frame_num']} frames of {config['input_size']}x{config['input_size']} "
                    f"pixels <-> {config['bottleneck_token_num']:,} tokens from a codebook of {codes:,} codes.")
        if class_name == "LARPAR":
            cond = ("frame prediction (conditioned on the tokens of the first frames)" if config["frame_prediction"]
                    else f"{config['num_classes']:,} classes")
            return (f"A Llama-style transformer ({config['n_layer']} layers, width {config['dim']}) over "
                    f"{config['max_seq_len']:,} tokens of a {config['vocab_size']:,}-code tokenizer; {cond}.")
    except (KeyError, TypeError):
        pass
    return ""


def format_value(v: Any) -> str:
    """A figure as the card writes it (floats to 4 significant digits)."""
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        return ", ".join(format_value(x) for x in v)
    return str(v)


def _table(values: dict[str, Any]) -> list[str]:
    return ["| metric | value |", "| --- | --- |", *[f"| {k} | {format_value(v)} |" for k, v in values.items()]]


def _metric_names(*tables: dict[str, Any] | None) -> list[str]:
    """The metric names for the card's header: `val/psnr` -> `psnr`, measured values (floats) only, each once."""
    names: list[str] = []
    for table in tables:
        for key, value in (table or {}).items():
            name = key.split("/")[-1]
            if isinstance(value, float) and name not in names:
                names.append(name)
    return names


def card_data(class_name: str, metrics: dict[str, Any] | None = None,
              evaluations: dict[str, dict[str, Any]] | None = None) -> Any:
    """The card's YAML header as `huggingface_hub.ModelCardData`."""
    from huggingface_hub import ModelCardData

    tags = ["larp", *_KINDS.get(class_name, ("", []))[1], PAPER_TAG]
    names = _metric_names(metrics, *(evaluations or {}).values())
    return ModelCardData(library_name="larp", license="mit", tags=tags, metrics=names or None)


def model_card(class_name: str, config: dict[str, Any], *, num_parameters: int,
               recipe: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
               training: dict[str, Any] | None = None, evaluations: dict[str, dict[str, Any]] | None = None,
               repo_id: str | None = None) -> str:
    """The Markdown text of a model card.

    `recipe`: the resolved training recipe; `metrics`: the last evaluation during training; `training`:
    facts about the run (keys of `_TRAINING`, e.g. `steps`, `train_data`, `recipe_sha256`); `evaluations`:
    further figures, titled (e.g. the demo's)."""
    from huggingface_hub import ModelCard

    title, _ = _KINDS.get(class_name, (class_name, []))
    where = repo_id or "path/to/this/folder"
    summary = _summary(class_name, config)
    body = [f"# {repo_id.split('/')[-1] if repo_id else title}", "",
            f"A {title} (`larp.{class_name}`), {num_parameters:,} parameters: LARP "
            f"([arXiv:2410.21264]({PAPER_URL})) as the `larp` library implements it.",
            *([summary] if summary else []), "",
            "## Usage", "", "```python", f"from larp import {class_name}", "",
            f'model = {class_name}.from_pretrained("{where}")', "```", "",
            "Loading reads `config.json` and `model.safetensors` only (no pickle) and is strict: a missing, "
            "unexpected or mis-shaped tensor, a non-float or non-finite weight, or an unknown config key is "
            "an error.", "",
            "## Intended use and limitations", "",
            _USES.get(class_name, "Research on video tokenization and generation."),
            "A model reproduces what its training data holds: it is not meant for data unlike that data, its "
            "figures hold for the protocol they name only, and generated videos can show people and events "
            "that never happened.", "",
            "## Training", ""]
    facts = [(label, (training or {}).get(key)) for key, label in _TRAINING.items()]
    facts = [(label, v) for label, v in facts if v not in (None, "", [], ())]
    body += [f"- {label}: {format_value(v)}" for label, v in facts] + ([""] if facts else [])
    if recipe:
        body += ["The resolved recipe:", "", "```json",
                 json.dumps(recipe, indent=2, sort_keys=True, default=str), "```"]
    else:
        body.append("Not recorded: this folder was saved without its training recipe.")
    body += ["", "## Metrics", ""]
    if metrics:
        step = (training or {}).get("eval_step")
        body += [f"The last evaluation during training{f' (step {step})' if step is not None else ''}, on the "
                 "validation clips:", "",
                 *_table(metrics)]
    else:
        body.append("Not recorded: no evaluation was saved with this folder.")
    for name, values in (evaluations or {}).items():
        body += ["", f"### {name}", "", *_table(values)]
    body += ["", "## Configuration", "", "```json", json.dumps(config, indent=2, sort_keys=True), "```", "",
             "## License", "", "MIT.", "",
             "## Citation", "", f"The LARP paper ([arXiv:2410.21264]({PAPER_URL})):", "", "```bibtex", BIBTEX,
             "```"]
    data = card_data(class_name, metrics, evaluations)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"))

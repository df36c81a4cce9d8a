"""The model card (`README.md`) that `save_pretrained` writes next to `config.json` and `model.safetensors`:
what the model is, how to load it, its configuration, and its training recipe and metrics when known.
The YAML header is what the Hugging Face hub reads (library, tags)."""

from __future__ import annotations

import json
import math
from typing import Any

_KINDS = {
    "LARPTokenizer": ("LARP video tokenizer", ["video-tokenizer"]),
    "LARPAR": ("LARP autoregressive video generator", ["video-generation"]),
}


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


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def model_card(class_name: str, config: dict[str, Any], *, num_parameters: int,
               recipe: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
               repo_id: str | None = None) -> str:
    """The Markdown text of a model card."""
    title, tags = _KINDS.get(class_name, (class_name, []))
    where = repo_id or "path/to/this/folder"
    lines = ["---", "library_name: larp", "tags:", "- larp", *[f"- {t}" for t in tags], "---", "",
             f"# {repo_id.split('/')[-1] if repo_id else title}", "",
             f"A {title} (`larp.{class_name}`), {num_parameters:,} parameters.",
             *([_summary(class_name, config)] if _summary(class_name, config) else []), "",
             "## Usage", "", "```python", f"from larp import {class_name}", "",
             f'model = {class_name}.from_pretrained("{where}")', "```", "",
             "Loading reads `config.json` and `model.safetensors` only (no pickle) and is strict: a missing, "
             "unexpected or mis-shaped tensor, a non-float or non-finite weight, or an unknown config key is "
             "an error.", "", "## Configuration", "", "```json",
             json.dumps(config, indent=2, sort_keys=True), "```", "", "## Training recipe", ""]
    if recipe:
        lines += ["```json", json.dumps(recipe, indent=2, sort_keys=True, default=str), "```"]
    else:
        lines.append("Not recorded.")
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "| --- | --- |", *[f"| {k} | {_value(v)} |" for k, v in metrics.items()]]
    else:
        lines.append("Not recorded.")
    return "\n".join(lines) + "\n"

"""The README and docs: links that resolve, commands that parse, code that runs, and no wording a reader
cannot follow."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from larp.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
TEXT_SUFFIXES = {".md", ".py", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".json", ".html", ".css", ".js"}
SCANNED = ["README.md", "Makefile", "pyproject.toml", "src", "tests", "docs", "configs", "benchmarks", ".ci"]
RELEASED = ("hywang66/LARP-L-long-tokenizer", "hywang66/LARP-L-long-AR", "hywang66/LARP-L-long-AR-FP")

# References a reader of the repository cannot follow: a file that is not in it, numbered work items, or
# the people and processes that wrote it.
INTERNAL = [
    (re.compile(r"LARP_SPEC"), "a file outside the repository"),
    (re.compile(r"\bspec(ification)? (section|step|§)\s*\d", re.I), "a section of a file outside the repository"),
    (re.compile(r"\bissue\s*#?\d+", re.I), "an issue number"),
    (re.compile(r"\b(first|second|third|lead|this|other|previous|earlier|later)\s+sessions?\b", re.I), "a session"),
    (re.compile(r"\bno session\b", re.I), "a session"),
    (re.compile(r"\bother agents?\b", re.I), "the authors' process"),
]


def _text_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = REPO / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in path.rglob("*") if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name == "run")
                      and "__pycache__" not in p.parts and ".egg-info" not in str(p)]
    return files


def test_no_internal_wording():
    found = []
    for path in _text_files():
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for pattern, what in INTERNAL:
                if pattern.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {what}: {line.strip()[:100]}")
    assert not found, "\n".join(found)


# ------------------------------------------------------------------------------------------ links
def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _guides() -> list[Path]:
    """The user guides: docs/*.md (the studies live in docs/studies/)."""
    return sorted(DOCS.glob("*.md"))


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _prose(text))


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", _prose(path.read_text()), re.M)
    return {_slug(h) for h in headings}


def test_slug_follows_github():
    assert _slug("The metrics (`larp.data.synthetic`, `larp.eval.synthetic`)") == \
        "the-metrics-larpdatasynthetic-larpevalsynthetic"
    assert _slug("The VGG-16 file for LPIPS") == "the-vgg-16-file-for-lpips"


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    """Every relative link names a file of the repository, and its anchor a heading of that file."""
    broken = []
    for target in _links(doc.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        file = doc.parent.joinpath(path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, broken


def test_every_guide_is_linked_from_the_readme():
    linked = {README.parent.joinpath(t.partition("#")[0]).resolve() for t in _links(README.read_text())}
    missing = [str(p.relative_to(REPO)) for p in _guides() if p.resolve() not in linked]
    assert not missing, f"guides the README does not link: {missing}"
    assert (DOCS / "studies" / "README.md").resolve() in linked


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 250


# --------------------------------------------------------------------------------------- commands
def _commands(doc: Path) -> list[list[str]]:
    """Every `larp ...` line of a file's bash blocks (continuations joined, comments dropped)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", doc.read_text(), re.S | re.M)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "larp":
                commands.append(words[1:])
            elif words[:2] == ["torchrun", "--nproc_per_node=8"] and words[2:4] == ["-m", "larp.cli"]:
                commands.append(words[4:])
    return commands


@pytest.mark.parametrize("doc", [README, *_guides()], ids=lambda p: str(p.relative_to(REPO)))
def test_documented_commands_parse(doc):
    """A reader copies these: each must name a command and options that exist, as written."""
    commands = _commands(doc)
    if doc == README:
        assert len(commands) >= 12
    for argv in commands:
        assert argv[0] in COMMANDS, argv
        try:  # as `larp` parses: known options, then key=value recipe overrides where the command takes them
            args, extra = build_parser(load=[argv[0]]).parse_known_args(argv)
        except SystemExit as exc:
            raise AssertionError(f"{doc.name}: `larp {shlex.join(argv)}` does not parse") from exc
        overrides = hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra)
        assert not extra or overrides, f"{doc.name}: `larp {shlex.join(argv)}`: unrecognised {extra}"
        assert getattr(args, "func", None) is not None, argv


# -------------------------------------------------------------------------------------- Python code
@pytest.fixture
def released_stand_ins(tmp_path, monkeypatch):
    """Small random models in the released models' roles and input shape, served for their hub ids;
    returns the tokenizer."""
    from larp import LARPAR, LARPTokenizer, ar_preset, tokenizer_preset
    from larp.models import hub

    torch.manual_seed(0)
    tok_cfg = dataclasses.replace(tokenizer_preset("larp-tiny"), input_size=128, frame_num=16, patch_size=16,
                                  decoder_patch_size=16)
    tok = LARPTokenizer(tok_cfg)
    n, k = tok.num_tokens, tok.codebook_size
    ar_cfg = dataclasses.replace(ar_preset("ar-tiny"), num_classes=101, vocab_size=k, max_seq_len=n)
    fp_cfg = dataclasses.replace(ar_cfg, frame_prediction=True, cls_token_num=n + 1)
    folders = {}
    for repo, model in zip(RELEASED, (tok, LARPAR(ar_cfg), LARPAR(fp_cfg)), strict=True):
        folders[repo] = model.save_pretrained(tmp_path / "models" / repo.split("/")[1])
    real = hub.resolve_folder

    def resolve(path_or_repo, revision=None):
        return folders.get(str(path_or_repo)) or real(path_or_repo, revision)

    monkeypatch.setattr(hub, "resolve_folder", resolve)
    return tok


def _python_blocks(doc: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", doc.read_text(), re.S | re.M)


def test_readme_python_runs(released_stand_ins, tmp_path, monkeypatch):
    """The README's Python blocks, in order, in one namespace, in a folder holding `clip.mp4`."""
    from larp.data.video_write import write_mp4

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    rng = np.random.default_rng(0)
    write_mp4("clip.mp4", rng.integers(0, 256, (20, 72, 96, 3), dtype=np.uint8), fps=8)
    blocks = _python_blocks(README)
    assert len(blocks) >= 3
    namespace: dict = {}
    shapes = []
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
        shapes.append({k: tuple(v.shape) for k, v in namespace.items() if isinstance(v, torch.Tensor)})
    clip = (2, 3, 16, 128, 128)
    assert shapes[0]["recon"] == clip and shapes[0]["tokens"] == (2, released_stand_ins.num_tokens)
    assert shapes[1]["videos"] == clip and shapes[1]["future"] == clip
    assert shapes[2]["recon"] == (3, 20, 72, 96) and shapes[2]["video"][1] == 20
    assert (work / "clip.npz").is_file() and (work / "recon.mp4").is_file()

"""The prior ablation's bookkeeping (benchmarks/prior_ablation.py): the arms' recipes differ only in the prior's
weight, rows of another base recipe are refused, and a cell resumes at the stage where it stopped."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pa():
    """The script and the siblings it imports, as `python benchmarks/prior_ablation.py` finds them."""
    names = ("prior_ablation", "prior_ablation_state", "prior_ablation_report")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield _load("prior_ablation")
    finally:
        sys.path.remove(str(BENCHMARKS))
        for name in names:
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def report():
    try:
        yield _load("prior_ablation_report")
    finally:
        sys.modules.pop("prior_ablation_report", None)


DATA = {"train": "/data/train.csv", "val": "/data/val.csv"}


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def _recipes(pa, cell, extra=()):
    return pa.resolved_recipes(*pa.cell_overrides(cell, pa.BASE, Path("/runs") / cell.id, DATA, list(extra)))


def test_cell_ids_round_trip_and_bad_ids_are_named(pa):
    for cell in (pa.Cell(64, True, 0), pa.Cell(16, False, 3)):
        assert pa.Cell.parse(cell.id) == cell
    assert pa.Cell(32, False, 1).id == "n32-noprior-s1"
    with pytest.raises(ValueError, match="expected a cell id like n64-prior-s0 .* got 'n64-on-s0'"):
        pa.Cell.parse("n64-on-s0")


def test_the_arms_differ_only_in_the_prior_weight(pa):
    on, off = _recipes(pa, pa.Cell(64, True, 0)), _recipes(pa, pa.Cell(64, False, 0))
    tok_on, tok_off = _flat(on["tokenizer"]), _flat(off["tokenizer"])
    differ = {k for k in tok_on.keys() | tok_off.keys() if tok_on.get(k) != tok_off.get(k)}
    assert differ == {"loss.prior_weight", "run.out_dir"}
    assert (tok_on["loss.prior_weight"], tok_off["loss.prior_weight"]) == (0.06, 0.0)
    assert tok_on["model_config.prior_model.name"] == tok_off["model_config.prior_model.name"] == "gptc-XXXS"
    ar_on, ar_off = _flat(on["ar"]), _flat(off["ar"])
    assert {k for k in ar_on if ar_on[k] != ar_off[k]} == {"run.out_dir", "tokenizer.path", "data.token_cache"}
    # The recipe is the script's own: the presets' name is not used, the architecture is written out.
    assert tok_on["model.preset"] == "" and tok_on["model_config.bottleneck_token_num"] == 64
    assert ar_on["model_config.max_seq_len"] == 64 and ar_on["model_config.vocab_size"] == 4096


def test_recipe_hash_is_shared_by_all_cells_and_changes_with_the_base(pa):
    cells = [pa.Cell(16, False, 0), pa.Cell(64, True, 1)]
    hashes = {pa.recipe_hash(_recipes(pa, c), pa.BASE) for c in cells}
    assert len(hashes) == 1
    changed = pa.recipe_hash(_recipes(pa, cells[0], ["optim.lr=1e-4"]), pa.BASE)
    ar_changed = pa.recipe_hash(_recipes(pa, cells[0], ["ar.run.max_steps=7"]), pa.BASE)
    sampling = json.loads(json.dumps(pa.BASE))
    sampling["sampling"]["cfg_scale"] = 2.0
    assert len(hashes | {changed, ar_changed, pa.recipe_hash(_recipes(pa, cells[0]), sampling)}) == 4


def _row(pa, cell, h="h1", sfvd=1.0, psnr=24.0):
    return {"cell": cell.id, "tokens": cell.tokens, "prior": "on" if cell.prior else "off", "seed": cell.seed,
            "recipe_hash": h, "recon": {"psnr": psnr}, "prior_eval": {}, "ar": {"val_nll": 7.0},
            "samples": {"sfvd": sfvd, "strict_accuracy": 0.5}, "seconds": {"total": 600.0}}


def test_results_keep_one_row_per_cell_and_refuse_another_recipe(pa, tmp_path):
    path = tmp_path / "results.json"
    res = pa.Results(path, "h1", {"k": 1})
    res.add("cells", _row(pa, pa.Cell(64, True, 0), sfvd=3.0))
    res.add("cells", _row(pa, pa.Cell(16, False, 0)))
    res.add("cells", _row(pa, pa.Cell(64, True, 0), sfvd=2.0))  # the same cell again: replaced
    data = json.loads(path.read_text())
    assert [r["cell"] for r in data["cells"]] == ["n16-noprior-s0", "n64-prior-s0"]
    assert data["cells"][1]["samples"]["sfvd"] == 2.0 and data["recipe_hash"] == "h1"
    assert pa.Results(path, "h1", {}).done("cells", "n64-prior-s0")["samples"]["sfvd"] == 2.0
    assert pa.Results(path, "h1", {}).done("cells", "n32-prior-s0") is None
    with pytest.raises(ValueError, match="row n32-prior-s0 has recipe h2, the results h1"):
        res.add("cells", _row(pa, pa.Cell(32, True, 0), h="h2"))
    with pytest.raises(SystemExit, match="holds rows of another base recipe \\(h1; this one is h2\\)"):
        pa.Results(path, "h2", {})


def test_a_cell_resumes_after_its_last_finished_stage(pa, tmp_path):
    calls = []

    def stage(name, fail=False):
        def fn():
            calls.append(name)
            if fail:
                raise KeyboardInterrupt  # the run is killed here
            return {"value": len(calls)}
        return fn

    state = pa.CellState(tmp_path, "h1")
    with pytest.raises(KeyboardInterrupt):
        pa.run_stages(state, [("a", stage("a")), ("b", stage("b", fail=True)), ("c", stage("c"))])
    again = pa.CellState(tmp_path, "h1")  # a new process reads the folder
    done = pa.run_stages(again, [("a", stage("a")), ("b", stage("b")), ("c", stage("c"))])
    assert calls == ["a", "b", "b", "c"]
    assert [done[k]["value"] for k in "abc"] == [1, 3, 4]
    assert set(done["a"]) == {"value", "seconds", "cpu_seconds"}
    with pytest.raises(SystemExit, match="was started with recipe h1, not h2"):
        pa.CellState(tmp_path, "h2")


def test_report_table_and_verdicts(pa, report):
    rows = [_row(pa, pa.Cell(64, prior, s), sfvd=v, psnr=p) for prior, s, v, p in
            ((False, 0, 5.0, 24.0), (False, 1, 7.0, 24.2), (True, 0, 3.0, 23.8), (True, 1, 4.0, 23.9))]
    rows += [_row(pa, pa.Cell(16, prior, 0), sfvd=v) for prior, v in ((False, 2.0), (True, 2.5))]
    assert report.verdicts(rows) == [
        "16 tokens: sFVD 2.00 without the prior, 2.50 with it; lower with the prior beyond the seeds' spread: "
        "n/a (one seed: no spread); "
        "PSNR with - without +0.00 dB (within 0.5 dB)",
        "64 tokens: sFVD 6.00 without the prior, 3.50 with it; lower with the prior beyond the seeds' spread: yes; "
        "PSNR with - without -0.25 dB (within 0.5 dB)"]
    lines = report.table(rows).splitlines()
    assert lines[2].startswith("| 16 | off | 1 | 24.00 |")
    assert lines[4].startswith("| 64 | off | 2 | 24.10 ± 0.10 |")
    assert "| 6.00 ± 1.00 | 50.0 ± 0.0 |" in lines[4]

"""The prior ablation (benchmarks/prior_ablation.py): a cell is the demo's pipeline whose arms differ only in the
prior's weight, rows of another recipe are refused, a cell resumes where it stopped, and the report's verdict."""

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


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def _differ(a, b):
    a, b = _flat(a), _flat(b)
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def test_cell_ids_round_trip_and_bad_ids_are_named(pa):
    for cell in (pa.Cell(64, True, 0), pa.Cell(16, False, 3)):
        assert pa.Cell.parse(cell.id) == cell
    assert pa.Cell(32, False, 1).id == "n32-noprior-s1"
    with pytest.raises(ValueError, match="expected a cell id like n64-prior-s0 .* got 'n64-on-s0'"):
        pa.Cell.parse("n64-on-s0")


def test_a_cell_is_the_demo_and_the_arms_differ_only_in_the_prior_weight(pa, tmp_path):
    from larp.demo.pipeline import Demo, DemoConfig

    data = {"train": str(tmp_path / "train.csv"), "val": str(tmp_path / "val.csv")}
    on = pa.demo_cell(pa.Cell(64, True, 0), tmp_path / "on", data).recipes()
    off = pa.demo_cell(pa.Cell(64, False, 0), tmp_path / "off", data).recipes()
    assert _differ(on["tokenizer"], off["tokenizer"]) == {"loss.prior_weight"}
    assert (on["tokenizer"]["loss"]["prior_weight"], off["tokenizer"]["loss"]["prior_weight"]) == (0.06, 0.0)
    assert on["tokenizer"]["model_config"]["prior_model"]["name"] == "gptc-XXXS"
    assert _differ(on["ar"], off["ar"]) == set()
    demo = Demo(tmp_path / "demo", DemoConfig()).recipes()  # the demo itself
    assert _differ(on["tokenizer"], demo["tokenizer"]) == {"model.config.bottleneck_token_num"}  # written out
    assert _differ(on["ar"], demo["ar"]) == {"run.threads", "model.config.max_seq_len"}
    assert on["ar"]["run"]["threads"] == 1 and on["ar"]["model_config"]["max_seq_len"] == 64
    other = pa.demo_cell(pa.Cell(32, True, 1), tmp_path / "n32", data).recipes()
    assert other["tokenizer"]["model_config"]["bottleneck_token_num"] == 32
    assert other["ar"]["model_config"]["max_seq_len"] == 32 and other["tokenizer"]["run"]["seed"] == 1


def test_recipe_hash_is_shared_by_all_cells_and_changes_with_the_recipe(pa, tmp_path):
    data = {"train": "t.csv", "val": "v.csv"}
    cells = [pa.Cell(64, True, 0), pa.Cell(32, False, 2)]
    demos = [pa.demo_cell(c, tmp_path / c.id, data) for c in cells]
    hashes = {pa.recipe_hash(d) for d in demos}
    assert len(hashes) == 1
    demos[0].cfg.cfg_scale = 3.0  # a sampling setting of the demo
    assert pa.recipe_hash(demos[0]) not in hashes


def _row(pa, cell, h="h1", sfvd=1.0, psnr=24.0, coherent=0.2):
    return {"cell": cell.id, "tokens": cell.tokens, "prior": "on" if cell.prior else "off", "seed": cell.seed,
            "recipe_hash": h, "recon": {"psnr": psnr}, "prior_eval": {}, "ar": {"val_nll": 7.0},
            "samples": {"sfvd": sfvd, "strict_accuracy": 0.5, "coherent_fraction": coherent},
            "seconds": {"total": 600.0}}


def test_results_keep_one_row_per_cell_and_refuse_another_recipe(pa, tmp_path):
    path = tmp_path / "results.json"
    res = pa.Results(path, "demo-recipe", "h1")
    res.add("cells", _row(pa, pa.Cell(64, True, 0), sfvd=3.0))
    res.add("cells", _row(pa, pa.Cell(16, False, 0)))
    res.add("cells", _row(pa, pa.Cell(64, True, 0), sfvd=2.0))  # the same cell again: replaced
    pa.Results(path, "older", "h0").add("cells", _row(pa, pa.Cell(64, True, 0), h="h0"))  # another ablation
    data = json.loads(path.read_text())["ablations"]
    assert [r["cell"] for r in data["demo-recipe"]["cells"]] == ["n16-noprior-s0", "n64-prior-s0"]
    assert data["demo-recipe"]["cells"][1]["samples"]["sfvd"] == 2.0 and data["demo-recipe"]["recipe_hash"] == "h1"
    assert data["older"]["recipe_hash"] == "h0" and len(data["older"]["cells"]) == 1
    assert pa.Results(path, "demo-recipe", "h1").done("cells", "n64-prior-s0")["samples"]["sfvd"] == 2.0
    assert pa.Results(path, "demo-recipe", "h1").done("cells", "n32-prior-s0") is None
    with pytest.raises(ValueError, match="row n32-prior-s0 has recipe h2, the results h1"):
        res.add("cells", _row(pa, pa.Cell(32, True, 0), h="h2"))
    with pytest.raises(SystemExit, match="holds rows of ablation demo-recipe with another recipe \\(h1; this one is h2\\)"):
        pa.Results(path, "demo-recipe", "h2")


def test_a_quick_cell_runs_the_demo_stages_and_resumes_without_redoing_them(pa, tmp_path, monkeypatch):
    data = pa.prepare_data(tmp_path, quick=True)
    assert pa.prepare_data(tmp_path, quick=True) == data  # written once, then read
    cell = pa.Cell(64, False, 0)
    h = pa.recipe_hash(pa.demo_cell(cell, tmp_path / "template", data, quick=True))
    with pytest.raises(SystemExit, match="resolves to recipe"):
        pa.run_cell(cell, tmp_path / "cells" / cell.id, data, "another", quick=True)
    row = pa.run_cell(cell, tmp_path / "cells" / cell.id, data, h, quick=True)
    assert row["recipe_hash"] == h and row["prior_weight"] == 0.0 and row["samples"]["count"] == 10
    assert row["recon"]["psnr"] > 10 and 0 <= row["samples"]["coherent_fraction"] <= 1
    assert row["ar"]["val_nll"] > 0 and row["prior_eval"]["prior_ce"] > 0
    assert set(row["seconds"]) >= {"tokenizer", "recon", "codes", "ar", "ar_eval", "samples", "score", "total"}
    state = json.loads((tmp_path / "cells" / cell.id / "demo.json").read_text())
    del state["done"]["score"]  # as if the run was killed during the last stage
    (tmp_path / "cells" / cell.id / "demo.json").write_text(json.dumps(state))
    monkeypatch.setattr(pa, "stage_ar_eval", lambda demo: pytest.fail("a finished stage ran again"))
    again = pa.run_cell(cell, tmp_path / "cells" / cell.id, data, h, quick=True)
    assert json.dumps(again["samples"]) == json.dumps(row["samples"]) and again["ar"] == row["ar"]  # NaN spread


def test_report_table_and_verdicts(pa, report):
    cells = ((False, 0, 5.0, 24.0, 0.10), (False, 1, 7.0, 24.2, 0.20), (True, 0, 3.0, 23.8, 0.30),
             (True, 1, 4.0, 23.9, 0.40))
    rows = [_row(pa, pa.Cell(64, prior, s), sfvd=v, psnr=p, coherent=c) for prior, s, v, p, c in cells]
    rows += [_row(pa, pa.Cell(16, prior, 0), sfvd=v) for prior, v in ((False, 2.0), (True, 2.5))]
    lines = report.verdicts(rows)
    assert lines[0].startswith("16 tokens: sample sFVD 2 without the prior, 2 with it (lower with it beyond the "
                               "seeds' spread: n/a (one seed))")
    assert "Verdict: not met" in lines[0]
    assert lines[1].startswith("64 tokens: sample sFVD 6 without the prior, 4 with it (lower with it beyond the "
                               "seeds' spread: yes); coherent samples 15.0 % without, 35.0 % with (higher with it "
                               "beyond the spread: yes); PSNR with - without -0.25 dB (within 0.5 dB). Verdict: met.")
    assert "sample sFVD -2.5 (seeds -3 to -2)" in lines[1] and "coherent +20 points (seeds +20 to +20)" in lines[1]
    rows[3]["samples"]["coherent_fraction"] = 0.15  # seed 1 with the prior below seed 1 without: overlap
    assert "beyond the spread: no" in report.verdicts(rows)[1] and "Verdict: not met" in report.verdicts(rows)[1]
    table = report.table(rows).splitlines()
    assert table[2].startswith("| 16 | off | 1 | 24.00 |")
    assert table[4].startswith("| 64 | off | 2 | 24.10 ± 0.10 |")
    assert "| 6 ± 1 | 50.0 ± 0.0 | 15.0 ± 5.0 |" in table[4]

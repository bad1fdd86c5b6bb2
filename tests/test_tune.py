"""Offline tau tuning on a synthetic `generate` log."""

import json
from argparse import Namespace

import numpy as np
import pytest
from PIL import Image

from sdvg_core import costmodel, tune
from sdvg_core.errors import InputError, MissingFileError

COMPONENTS = {"target_context": 0.2, "target_block": 1.0, "drafter_context": 0.03, "drafter_block": 0.14,
              "vae_decode_block": 0.06, "router_block": 0.01, "target_block_first": 0.9,
              "vae_encode_anchor": 0.004}


def synthetic_log(path, videos=6, blocks=9, seed=0, tau=-0.7):
    """Records shaped like `generate`'s: block 0 unscored, one skipped block, one cascade exit."""
    rng = np.random.default_rng(seed)
    frame_scores = {}
    with open(path, "w") as f:
        for v in range(videos):
            records = [{"block": 0, "decision": "target", "scores": [], "aggregate": None}]
            for b in range(1, blocks):
                if v == 0 and b == 4:
                    records.append({"block": b, "decision": "skipped", "scores": [], "aggregate": None})
                    continue
                scores = (rng.normal(-0.5, 0.8) + 0.3 * rng.standard_normal(12)).round(4).tolist()
                scoring = "cascade_reject" if (v == 1 and b == 2) else "full"
                if scoring == "cascade_reject":
                    scores = scores[:4]
                frame_scores[(v, b)] = scores
                records.append({"block": b, "decision": "accepted" if min(scores) >= tau else "rejected",
                                "scores": scores, "aggregate": min(scores), "scoring": scoring, "tau": tau})
            f.write(json.dumps({"prompt": f"prompt {v}", "seed": 42, "tau": tau, "mode": "sdvg",
                                "blocks": records, "summary": {}}) + "\n")
        f.write("\n")  # a trailing blank line is tolerated
    return frame_scores


def write_bench(path, num_blocks=9):
    path.write_text(json.dumps({"preset": "cpu", "device": "test cpu", "num_blocks": num_blocks,
                                "component_seconds": COMPONENTS}))
    return path


@pytest.mark.parametrize("how, reference", [
    ("min", np.min), ("mean", np.mean), ("quantile", lambda s: np.quantile(s, 0.25, method="linear"))])
def test_aggregates_are_recomputed_from_frame_scores(tmp_path, how, reference):
    frame_scores = synthetic_log(tmp_path / "log.jsonl")
    logged = tune.collect_scores(tune.read_log(tmp_path / "log.jsonl"), how, 0.25)
    expected = [reference(np.array(frame_scores[key])) for key in sorted(frame_scores)]
    assert logged.aggregates == pytest.approx(expected, abs=1e-6)
    assert logged.videos == 6 and logged.blocks_per_video == 9
    assert logged.unscored_blocks == 6 + 1       # every block 0, plus the skipped one
    assert logged.partial_blocks == 1
    assert logged.logged_taus == [-0.7]


def test_sweep_counts_accepts_and_prices_them_with_the_cost_model(tmp_path):
    synthetic_log(tmp_path / "log.jsonl")
    aggregates = tune.collect_scores(tune.read_log(tmp_path / "log.jsonl")).aggregates
    components = costmodel.ComponentSeconds.from_dict(COMPONENTS)
    taus = tune.tau_grid(aggregates)
    assert taus[0] <= min(aggregates) and taus[-1] >= max(aggregates)
    rows = tune.sweep(aggregates, taus, components, num_blocks=9, hybrid_k=3)
    for row in rows:
        assert row.accepted == sum(1 for a in aggregates if a >= row.tau)   # brute force
        assert row.accept_rate == row.accepted / len(aggregates)
    # At both ends the prediction is the cost model's all-accepted / all-rejected video.
    assert rows[0].accept_rate == 1.0 and rows[-1].accept_rate < 1.0
    full = costmodel.predicted_speedup(components, num_blocks=9, accept_rate=1.0, hybrid_k=3)
    assert rows[0].predicted_speedup == pytest.approx(full)
    rates = [r.accept_rate for r in rows]
    speedups = [r.predicted_speedup for r in rows]
    assert rates == sorted(rates, reverse=True) and speedups == sorted(speedups, reverse=True)
    # Hand check of one row. Block 0: 0.9 + decode 0.06; anchors 7 * 0.004; blocks 1-8: target
    # 0.2 + 1.0 + 0.06, or drafter + decode + router, plus a reject's 0.2 + 2/5 * 1.0 + 0.06.
    row = rows[len(rows) // 2]
    rejected = 8 * (1 - row.accept_rate)
    target_only = 0.96 + 8 * (0.2 + 1.0 + 0.06) + 7 * 0.004
    sdvg = 0.96 + 8 * (0.03 + 0.14 + 0.06 + 0.01) + rejected * (0.2 + 0.4 + 0.06) + 7 * 0.004
    assert row.predicted_speedup == pytest.approx(target_only / sdvg)


def test_tau_grid_uses_round_steps_and_honours_explicit_bounds():
    grid = tune.tau_grid([-1.37, 0.42])
    steps = np.diff(grid)
    assert np.allclose(steps, steps[0]) and any(abs(steps[0] - s) < 1e-9 for s in tune.NICE_STEPS)
    assert grid[0] <= -1.37 and grid[-1] >= 0.42 and len(grid) <= 26
    assert tune.tau_grid([0.0], tau_min=-1, tau_max=1, step=0.5) == [-1, -0.5, 0, 0.5, 1]
    with pytest.raises(InputError, match="tau-min"):
        tune.tau_grid([0.0], tau_min=1, tau_max=-1)


def test_main_prints_the_table_and_writes_the_plot(tmp_path, capsys):
    synthetic_log(tmp_path / "results.jsonl")
    bench_json = write_bench(tmp_path / "cpu.json")
    args = Namespace(log=str(tmp_path / "results.jsonl"), bench=str(bench_json), aggregation="min",
                     quantile=0.1, tau_min=None, tau_max=None, tau_step=None, hybrid_k=0, blocks=None, out=None)
    assert tune.main(args) == 0
    out = capsys.readouterr().out
    assert "accept rate" in out and "speedup" in out and "<- logged tau" in out
    assert "cascade" in out  # the partial block is reported
    plot = tmp_path / "results.tune.png"
    with Image.open(plot) as image:
        assert image.format == "PNG"


def test_cli_is_wired(tmp_path, capsys):
    from sdvg_core.__main__ import main

    synthetic_log(tmp_path / "log.jsonl")
    bench_json = write_bench(tmp_path / "b.json")
    png = tmp_path / "sub" / "t.png"
    assert main(["tune", "--log", str(tmp_path / "log.jsonl"), "--bench", str(bench_json),
                 "--tau-min", "-2", "--tau-max", "1", "--tau-step", "0.5", "--out", str(png)]) == 0
    assert png.is_file()
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip().endswith(("x", "tau"))]
    assert len(lines) >= 7  # -2 .. 1 by 0.5, plus the logged -0.7


def test_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(MissingFileError, match="nope.jsonl"):
        tune.read_log(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"blocks": []}\n{not json\n')
    with pytest.raises(InputError, match="line 2"):
        tune.read_log(bad)
    unscored = tmp_path / "target_only.jsonl"
    unscored.write_text(json.dumps({"blocks": [{"block": 0, "decision": "target", "scores": []}]}) + "\n")
    with pytest.raises(InputError, match="no block has frame scores"):
        tune.collect_scores(tune.read_log(unscored))
    not_bench = tmp_path / "x.json"
    not_bench.write_text("{}")
    with pytest.raises(InputError, match="component_seconds"):
        tune.read_components(not_bench)
    with pytest.raises(MissingFileError, match="make bench"):
        tune.read_components(tmp_path / "missing.json")

"""The benchmark's outputs: the Markdown table and the speedup chart (the JSON is the result dict)."""

from __future__ import annotations

from pathlib import Path

from ..chart import Panel, Series, draw_chart
from ..costmodel import PAPER_POINTS, ComponentSeconds, predicted_speedup


def write_markdown(result: dict, path: Path) -> None:
    lines = [f"# SDVG benchmark, preset `{result['preset']}`", "",
             f"{result['device']}; {result['date']}; {result['width']}x{result['height']}, "
             f"{result['num_blocks']} blocks per video, {result['repeats']} interleaved repeats.", "",
             "| mode | accept rate (asked) | k | s / video | speedup | bound | of bound | "
             "projected at real proportions | drafter / target / decode / router calls | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        rate = "-" if r["accept_rate"] is None else f"{r['accept_rate']:.3f} ({r['accept_rate_nominal']:g})"
        c = r["model_calls"]
        calls = f"{c['drafter']:g} / {c['target']:g} / {c['vae_decode']:g} / {c['router']:g}"
        peak = "-" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        mode = r["mode"] + (f" + skip {r['skip']} ({r['skipped_blocks']:g} blocks)" if r.get("skip", "none") != "none" else "")
        lines.append(f"| {mode} | {rate} | {r['hybrid_k'] if r['mode'] == 'sdvg' else '-'} | "
                     f"{r['seconds_per_video']:.3f} | {r['speedup']:.2f}x | {r['bound']:.2f}x | "
                     f"{r['fraction_of_bound']:.0%} | {r['projected_speedup']:.2f}x | {calls} | {peak} |")
    lines += ["", "projected: the cost model's speedup at the real system's cost proportions (1.3B : 14B : VAE : "
              "router FLOPs at 832x480), times the median fraction of its bound the runs reached "
              f"({result.get('efficiency', 1.0):.1%}); the measured speedups at the calibrated proportions check it.",
              "Paper (2x RTX A6000, real weights): 1.59x at 73.1% accepted, 2.05x at 87.5%.", "",
              "## Components (median seconds per block)", "",
              "| component | seconds | / target block | real system (FLOPs) |", "|---|---|---|---|"]
    ratios = result["component_ratios"]
    for k, v in result["component_seconds"].items():
        lines.append(f"| {k} | {v:.4f} | {ratios['measured'][k]:.4f} | {ratios['real_flops'][k]:.4f} |")
    t = result["targets"]
    lines += ["", "## Targets", "",
              f"- every sdvg run >= {t['bound_fraction_required']:.0%} of its bound: "
              f"{'yes' if t['all_within_bound_fraction'] else 'no: ' + ', '.join(t['below_bound_fraction'])}"]
    for k, v in t["speedup_at_0.73"].items():
        lines.append(f"- {k} at accept rate 0.73 (run at {v['accept_rate_run']:.3f}): {v['measured']:.2f}x, "
                     f"required {v['required']}x: {'met' if v['met'] else 'MISSED'}")
    lines += _gpu_sections(result)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _gpu_sections(result: dict) -> list[str]:
    """The GPU preset's extras (bench/gpu.py): planned against measured peaks, the capped fp8 runs,
    the router's preprocessing paths."""
    lines = []
    if any("planned_peak_mb" in r for r in result["runs"]):
        lines += ["", "## Memory: the plan against the measured peak", "",
                  "| run | measured peak MiB | planned MiB | measured / planned |", "|---|---|---|---|"]
        for r in result["runs"]:
            measured, planned = r.get("peak_memory_mb"), r["planned_peak_mb"]
            name = r["mode"] + ("" if r["accept_rate"] is None else f" a={r['accept_rate_nominal']:g} k={r['hybrid_k']}")
            lines.append(f"| {name} | {'-' if measured is None else f'{measured:.0f}'} | {planned:.0f} | "
                         f"{'-' if measured is None else f'{measured / planned:.2f}'} |")
    if result.get("capped_runs"):
        lines += ["", "## SDVG with an fp8 target under a memory cap", "",
                  "| size | cap GiB | plan GiB (with 10% headroom) | outcome | s / video | peak MiB (planned) |",
                  "|---|---|---|---|---|---|"]
        for c in result["capped_runs"]:
            enforced = "" if c["enforced"] else " (not enforced on the CPU)"
            peak = (f"{c['peak_memory_mb']:.0f} ({c['planned_peak_mb']:.0f})"
                    if c.get("peak_memory_mb") is not None else "-")
            seconds = f"{c['seconds']:.2f}" if "seconds" in c else "-"
            lines.append(f"| {c['width']}x{c['height']} | {c['cap_gib']:.3g}{enforced} | {c['planned_gib']:.2f} | "
                         f"{c['outcome']} | {seconds} | {peak} |")
        refused = next((c for c in result["capped_runs"] if c["outcome"].startswith("refused")), None)
        if refused:
            lines += ["", "The plan's message:", "", "```", refused["message"], "```"]
    pre = result.get("router_preprocessing")
    if pre:
        s = pre["seconds"]
        lines += ["", f"## Router preprocessing ({pre['frames']} frames at {pre['width']}x{pre['height']}, "
                      f"{pre['device']})", "",
                  f"- ImageReward's PIL path: {s['exact_preprocess']:.4f} s; on-device path: "
                  f"{s['device_preprocess']:.4f} s; the scorer's forward: {s['scorer_forward']:.4f} s",
                  f"- largest score difference between the paths: {pre['max_score_difference']:.2e} "
                  f"({pre['relative_difference']:.1e} of the scores' spread)"]
    return lines


def plot_speedups(result: dict, path: Path) -> None:
    """Speedup vs accept rate: the bound's curves, the measured points, the paper's points."""
    components = ComponentSeconds.from_dict(result["component_seconds"])
    n = result["num_blocks"]
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    grid = [i / 50 for i in range(51)]
    series = []
    ks = sorted({r["hybrid_k"] for r in result["runs"] if r["mode"] == "sdvg"})
    for colour, k in zip(colours, ks):
        curve = [(a, predicted_speedup(components, num_blocks=n, accept_rate=a, hybrid_k=k)) for a in grid]
        series.append(Series(f"bound, k={k}", curve, colour=colour))
        points = [(r["accept_rate"], r["speedup"]) for r in result["runs"]
                  if r["mode"] == "sdvg" and r["hybrid_k"] == k and r.get("skip", "none") == "none"]
        series.append(Series(f"measured, k={k}", points, colour=colour, line=False, marker="o"))
    series.append(Series("paper (2x A6000, real weights, reference code)", [(a, s) for a, s in PAPER_POINTS],
                         colour=(0, 0, 0), line=False, marker="s",
                         notes=[f"{s:.2f}x at {a:.1%}" for a, s in PAPER_POINTS]))
    hlines = [(1.0, "target-only")]
    draft = next((r for r in result["runs"] if r["mode"] == "draft_only"), None)
    if draft:
        hlines.append((draft["speedup"], f"draft-only {draft['speedup']:.2f}x"))
    panel = Panel(f"speedup over target-only ({result['preset']} preset)", series, hlines=hlines)
    draw_chart([panel], xlabel="accept rate (scored blocks)", x_range=(0.0, 1.0),
               title=f"{result['device']}").save(path)

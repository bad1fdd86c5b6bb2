"""Pick tau offline: the accept rate and the predicted speedup each tau would give on your prompts.

Reads the per-block, per-frame scores that ``python -m sdvg_core generate`` logs (one JSON line
per prompt) and the component timings of a benchmark (``bench-results/<preset>.json``). For
each tau of a range it recomputes every scored block's aggregate (worst frame by default),
counts how many drafts tau would accept, and asks the cost model (sdvg_core/costmodel.py)
what speedup that accept rate buys on the benchmarked hardware. Nothing is regenerated.

Blocks without scores are left out: block 0 (always the target's), skipped verifications,
target-only and draft-only runs. Blocks scored by the cascade's early exit carry only a
subset of frame scores, so their worst frame can only be optimistic; they are counted and
reported.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .costmodel import ComponentSeconds, video_seconds
from .errors import InputError, MissingFileError
from .config import AGGREGATIONS
from .verifier import aggregate

PARTIAL_SCORING = ("cascade_reject", "cascade_accept")
NICE_STEPS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0, 2.0, 5.0)


@dataclass
class LoggedScores:
    """Aggregates of every scored block of a log, and what was left out."""

    aggregates: list[float]
    videos: int
    blocks_per_video: int | None   # None when videos differ in length
    logged_taus: list[float]
    unscored_blocks: int
    partial_blocks: int


@dataclass
class TauRow:
    tau: float
    accepted: int
    scored: int
    accept_rate: float
    predicted_seconds: float
    predicted_speedup: float


def read_log(path: str | Path) -> list[dict]:
    """The records of a ``generate`` JSONL log; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--log {path}: no such file. `python -m sdvg_core generate` writes "
                               "results.jsonl in its --out folder.")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise InputError(f"--log {path}, line {number}: not JSON ({error}); each line must be "
                             "one record written by `generate`.") from None
        if not isinstance(record, dict) or not isinstance(record.get("blocks"), list):
            raise InputError(f"--log {path}, line {number}: no 'blocks' list; this is not a "
                             "`generate` log.")
        records.append(record)
    if not records:
        raise InputError(f"--log {path} holds no records; run `generate` in sdvg mode first.")
    return records


def collect_scores(records: list[dict], how: str = "min", quantile: float = 0.1,
                   source: str = "log") -> LoggedScores:
    """Recompute each scored block's aggregate from its per-frame scores."""
    aggregates, taus, lengths = [], [], set()
    unscored = partial = 0
    for number, record in enumerate(records, start=1):
        blocks = record["blocks"]
        lengths.add(len(blocks))
        if isinstance(record.get("tau"), (int, float)):
            taus.append(float(record["tau"]))
        for block in blocks:
            scores = block.get("scores") if isinstance(block, dict) else None
            if not scores:
                unscored += 1
                continue
            if not all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores):
                raise InputError(f"{source}, record {number}, block {block.get('block')}: scores "
                                 f"must be finite numbers, got {scores!r}.")
            partial += block.get("scoring") in PARTIAL_SCORING
            aggregates.append(aggregate(scores, how, quantile))
    if not aggregates:
        raise InputError(f"{source}: no block has frame scores (only block 0, skipped blocks or "
                         "target-only/draft-only runs). Log a `generate --mode sdvg` run.")
    return LoggedScores(aggregates, len(records), lengths.pop() if len(lengths) == 1 else None,
                        sorted(set(taus)), unscored, partial)


def read_components(path: str | Path) -> tuple[ComponentSeconds, dict]:
    """Component seconds (and the whole JSON) of a benchmark result file."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--bench {path}: no such file. Run `make bench` (or `python -m "
                               "sdvg_core bench --preset gpu`) to write bench-results/<preset>.json.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise InputError(f"--bench {path}: not JSON ({error}).") from None
    if not isinstance(data, dict) or "component_seconds" not in data:
        raise InputError(f"--bench {path}: no 'component_seconds'; give the JSON that "
                         "`python -m sdvg_core bench` wrote.")
    return ComponentSeconds.from_dict(data["component_seconds"], f"--bench {path}"), data


def tau_grid(aggregates: list[float], tau_min: float | None = None, tau_max: float | None = None,
             step: float | None = None, rows: int = 25) -> list[float]:
    """An evenly spaced range of tau covering the aggregates (a 'nice' step unless given)."""
    low = min(aggregates) if tau_min is None else tau_min
    high = max(aggregates) if tau_max is None else tau_max
    if not (math.isfinite(low) and math.isfinite(high)) or high < low:
        raise InputError(f"tau range [{low}, {high}] is empty; give --tau-min below --tau-max.")
    if step is None:
        span = max(high - low, 1e-9)
        step = next((s for s in NICE_STEPS if span / s <= rows), NICE_STEPS[-1])
    if step <= 0:
        raise InputError(f"--tau-step must be positive, got {step}.")
    # Snap a computed end to the step's grid so the rows read as round numbers.
    start = math.floor(low / step + 1e-9) * step if tau_min is None else low
    stop = math.ceil(high / step - 1e-9) * step if tau_max is None else high
    count = int(math.floor((stop - start) / step + 1e-9))
    return [round(start + i * step, 10) for i in range(count + 1)]


def sweep(aggregates: list[float], taus: list[float], components: ComponentSeconds, *,
          num_blocks: int, hybrid_k: int = 0) -> list[TauRow]:
    """Accept rate and the cost model's predicted speedup for every tau."""
    baseline = video_seconds(components, "target_only", num_blocks=num_blocks)
    rows = []
    for tau in taus:
        accepted = sum(a >= tau for a in aggregates)
        rate = accepted / len(aggregates)
        seconds = video_seconds(components, "sdvg", num_blocks=num_blocks, accept_rate=rate,
                                hybrid_k=hybrid_k)
        rows.append(TauRow(tau, accepted, len(aggregates), rate, seconds, baseline / seconds))
    return rows


def format_table(rows: list[TauRow], marked: list[float] = ()) -> str:
    lines = [f"{'tau':>8}  {'accept rate':>11}  {'accepted':>10}  {'s/video':>9}  {'speedup':>8}"]
    for row in rows:
        note = "  <- logged tau" if any(abs(row.tau - t) < 1e-9 for t in marked) else ""
        lines.append(f"{row.tau:>8.3f}  {row.accept_rate:>11.1%}  {row.accepted:>4}/{row.scored:<5}"
                     f"  {row.predicted_seconds:>9.3f}  {row.predicted_speedup:>7.2f}x{note}")
    return "\n".join(lines)


def plot(rows: list[TauRow], path: Path, title: str, marked: list[float] = (), draft_only: float | None = None):
    """Two panels over tau: accept rate, and predicted speedup."""
    from .chart import Panel, Series, draw_chart

    taus = [r.tau for r in rows]
    rate = Panel("accept rate (scored blocks)", [Series("accept rate", list(zip(taus, [r.accept_rate for r in rows])),
                                                        colour=(31, 119, 180), marker="o")],
                 y_range=(0.0, 1.0), vlines=[(t, "logged tau") for t in marked], legend="right")
    lines = [Series("predicted speedup", list(zip(taus, [r.predicted_speedup for r in rows])),
                    colour=(214, 39, 40), marker="o")]
    hlines = [(1.0, "target-only")]
    if draft_only is not None:
        hlines.append((draft_only, "draft-only"))
    speed = Panel("predicted speedup over target-only", lines, vlines=[(t, "") for t in marked],
                  hlines=hlines, legend="right")
    draw_chart([rate, speed], xlabel="tau (accept a draft when its aggregate score >= tau)",
               title=title).save(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", required=True, help="results.jsonl written by `generate`")
    parser.add_argument("--bench", required=True, help="bench-results/<preset>.json")
    parser.add_argument("--aggregation", choices=AGGREGATIONS, default="min",
                        help="how a block's frame scores become one number")
    parser.add_argument("--quantile", type=float, default=0.1, help="for --aggregation quantile")
    parser.add_argument("--tau-min", type=float, default=None, help="default: lowest aggregate")
    parser.add_argument("--tau-max", type=float, default=None, help="default: highest aggregate")
    parser.add_argument("--tau-step", type=float, default=None, help="default: about 25 rows")
    parser.add_argument("--hybrid-k", type=int, default=0, help="the hybrid step the videos will use")
    parser.add_argument("--blocks", type=int, default=None,
                        help="blocks per video for the prediction (default: the log's, else the bench's)")
    parser.add_argument("--out", default=None, help="PNG path (default: next to the log)")


def main(args) -> int:
    components, bench = read_components(args.bench)
    logged = collect_scores(read_log(args.log), args.aggregation, args.quantile, f"--log {args.log}")
    num_blocks = args.blocks or logged.blocks_per_video or bench.get("num_blocks") or 9
    taus = tau_grid(logged.aggregates, args.tau_min, args.tau_max, args.tau_step)
    marked = [t for t in logged.logged_taus if taus[0] <= t <= taus[-1]]
    taus = sorted(set(taus) | set(marked))
    rows = sweep(logged.aggregates, taus, components, num_blocks=num_blocks, hybrid_k=args.hybrid_k)

    draft_only = video_seconds(components, "target_only", num_blocks=num_blocks) / \
        video_seconds(components, "draft_only", num_blocks=num_blocks)
    print(f"{len(logged.aggregates)} scored blocks from {logged.videos} video(s), aggregation "
          f"{args.aggregation}; {num_blocks} blocks per video, hybrid k = {args.hybrid_k}; "
          f"timings: {bench.get('preset', '?')} on {bench.get('device', '?')}")
    if logged.partial_blocks:
        print(f"note: {logged.partial_blocks} block(s) were decided by the cascade on a frame subset; "
              "their aggregate is an upper bound of the full one.")
    print(format_table(rows, marked))
    print(f"draft-only would be {draft_only:.2f}x; 1.00x is target-only.")
    out = Path(args.out) if args.out else Path(args.log).with_suffix(".tune.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, out, f"tau sweep: {Path(args.log).name} on {bench.get('preset', '?')} timings",
         marked, draft_only)
    print(f"plot: {out}")
    return 0

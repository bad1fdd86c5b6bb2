// Pure helpers of the SDVG timeline (no ComfyUI imports, so tests can run them under node).
// Colours match sdvg_core/timeline.py's DECISION_COLOURS.

export const DECISION_COLOURS = {
  target: "#5470c6",
  accepted: "#2ea05a",
  rejected: "#d64541",
  skipped: "#e8a838",
};

const isScore = (x) => typeof x === "number" && Number.isFinite(x);

// Blocks the router decided: the ones an accept rate counts (as in the paper's table).
export function scoredBlocks(blocks) {
  return (blocks || []).filter(
    (b) => b && (b.decision === "accepted" || b.decision === "rejected") && isScore(b.aggregate),
  );
}

// The accept rate the logged scores would have given at `tau` (an estimate: a different tau
// would also have changed the context of later drafts). Mirrors timeline.accept_rate_at.
export function acceptRateAt(blocks, tau) {
  const scored = scoredBlocks(blocks);
  const accepted = scored.filter((b) => b.aggregate >= tau).length;
  return { accepted, scored: scored.length, rate: scored.length ? accepted / scored.length : null };
}

// [low, high] of the score axis: every score and aggregate, and tau, with a margin.
export function scoreRange(blocks, tau) {
  const values = [];
  for (const b of blocks || []) {
    if (!b) continue;
    for (const s of b.scores || []) if (isScore(s)) values.push(s);
    if (isScore(b.aggregate)) values.push(b.aggregate);
  }
  if (isScore(tau)) values.push(tau);
  if (!values.length) return [-1, 1];
  const low = Math.min(...values);
  const high = Math.max(...values);
  const pad = Math.max(0.25, 0.1 * (high - low));
  return [low - pad, high + pad];
}

export function describeRate({ accepted, scored, rate }, tau) {
  if (!scored) return "no scored blocks yet";
  return `at tau ${tau.toFixed(2)}: ${accepted}/${scored} accepted (${Math.round(100 * rate)}%)`;
}

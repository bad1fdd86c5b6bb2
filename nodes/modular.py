"""Modular nodes: the session's four steps as separate nodes, between SDVG Begin and SDVG Finish.

Caching and aliasing. ComfyUI caches node outputs and may hand one output to several
consumers. A session is mutable, so:

- Every node here has ``IS_CHANGED`` returning NaN (never equal to itself, so never served
  from cache; every descendant re-runs too) and ``NOT_IDEMPOTENT``. Each queue run starts a
  fresh session in SDVG Begin.
- The SDVG_SESSION value is a ``SessionToken``: the session plus the number of steps taken
  when the token was made. A step accepts only the newest token and returns a new one. A
  stale token (one output wired into two step nodes, or a value reused after the session
  moved on) fails with an SDVGError instead of silently stepping the shared session twice.
  Forking a session per branch would need a copy of every cache and is not supported.
- A failing or interrupted step frees the session's caches, so a cancelled run does not pin
  GPU memory while its outputs sit in ComfyUI's cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sdvg_core.errors import SDVGError

from . import session as sdvg
from .sampler import sdvg_inputs
from .settings import make_config

SESSION = "SDVG_SESSION"
CATEGORY = "SDVG/modular"


class ModularRun:
    """One video being built step by step, and which token is current."""

    def __init__(self, session, models, prompt: str, vae, node_id):
        self.session, self.models, self.prompt, self.vae, self.node_id = session, models, prompt, vae, node_id
        self.steps = 0

    def advance(self, token: "SessionToken", step: str, action: Callable[[], object]):
        """Run one session step for the holder of the newest token; return (new token, result)."""
        if token.steps != self.steps:
            raise SDVGError(
                f"{step}: this SDVG_SESSION value is stale (made after step {token.steps}, the session "
                f"is at step {self.steps}). One session output is wired into two step nodes, or a "
                "value is reused after the session moved on. Chain the modular nodes in a single "
                "line: Draft Block -> ImageReward Router -> Regenerate -> Commit-to-KV.")
        sdvg.ensure_loaded(self.models, self.session.config)
        try:
            out = action()
        except BaseException:
            self.session.release()
            raise
        self.steps += 1
        return SessionToken(self, self.steps), out


@dataclass(frozen=True, eq=False)
class SessionToken:
    """The value on an SDVG_SESSION wire (see the module docstring)."""

    run: ModularRun
    steps: int

    @property
    def session(self):
        return self.run.session

    def __repr__(self) -> str:
        s = self.run.session
        return f"<SDVG session: block {s.block}/{s.config.num_blocks}, next '{s.phase}'>"


def _token(value, node: str) -> SessionToken:
    if not isinstance(value, SessionToken):
        raise SDVGError(f"{node}: 'session' must come from SDVG Begin or another SDVG step, got {value!r}.")
    return value


class _Stateful:
    """Never cached: the session changes under the same inputs."""

    NOT_IDEMPOTENT = True
    CATEGORY = CATEGORY

    @classmethod
    def IS_CHANGED(cls, **_inputs):
        return float("nan")


def session_input(tooltip: str = "The session, from the previous SDVG step.") -> dict:
    return {"session": (SESSION, {"tooltip": tooltip})}


class SDVGBegin(_Stateful):
    """Opens a session: the same inputs as SDVG Sampler, nothing generated yet."""

    RETURN_TYPES = (SESSION,)
    RETURN_NAMES = ("session",)
    FUNCTION = "begin"
    DESCRIPTION = "Starts a step-by-step SDVG video; loop Draft -> Router -> Regenerate -> Commit over its blocks."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": sdvg_inputs(), "hidden": {"unique_id": "UNIQUE_ID"}}

    def begin(self, drafter, target, vae, router, positive, prompt, unique_id=None, **video):
        config = make_config(**video)
        session = sdvg.start_session(drafter=drafter, target=target, vae=vae, router=router,
                                     positive=positive, prompt=prompt, config=config,
                                     node_id=unique_id)
        run = ModularRun(session, (drafter, target, vae, router), prompt, vae, unique_id)
        return (SessionToken(run, 0),)


class SDVGDraftBlock(_Stateful):
    """The drafter proposes the current block (block 0 is left to the target)."""

    RETURN_TYPES = (SESSION,)
    RETURN_NAMES = ("session",)
    FUNCTION = "draft"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": session_input()}

    def draft(self, session):
        token = _token(session, "Draft Block")
        new, _ = token.run.advance(token, "Draft Block", token.session.draft)
        return (new,)


class SDVGRouteBlock(_Stateful):
    """Decodes the draft and lets ImageReward accept (score >= tau) or reject it."""

    RETURN_TYPES = (SESSION, "STRING")
    RETURN_NAMES = ("session", "decision")
    OUTPUT_TOOLTIPS = ("The session.", "target, accepted, rejected or skipped.")
    FUNCTION = "route"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": session_input()}

    def route(self, session):
        token = _token(session, "ImageReward Router")
        new, decision = token.run.advance(token, "ImageReward Router", token.session.route)
        return (new, decision)


class SDVGRegenerateBlock(_Stateful):
    """The target generates the block if the draft was rejected (nothing otherwise)."""

    RETURN_TYPES = (SESSION,)
    RETURN_NAMES = ("session",)
    FUNCTION = "regenerate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": session_input()}

    def regenerate(self, session):
        token = _token(session, "Regenerate")
        new, _ = token.run.advance(token, "Regenerate", token.session.regenerate)
        return (new,)


class SDVGCommitBlock(_Stateful):
    """Keeps the block's latents, from which the next model rebuilds its KV cache."""

    RETURN_TYPES = (SESSION,)
    RETURN_NAMES = ("session",)
    FUNCTION = "commit"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": session_input()}

    def commit(self, session):
        token = _token(session, "Commit-to-KV")
        new, _ = token.run.advance(token, "Commit-to-KV", token.session.commit)
        return (new,)


class SDVGFinish(_Stateful):
    """The video of a finished session: the same outputs as SDVG Sampler."""

    RETURN_TYPES = ("IMAGE", "LATENT", "STRING", "IMAGE")
    RETURN_NAMES = ("frames", "latent", "stats_json", "timeline")
    FUNCTION = "finish"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": session_input("The session after its last Commit-to-KV (from SDVG Block Loop End).")}

    def finish(self, session):
        token = _token(session, "SDVG Finish")
        s, run = token.session, token.run
        if not s.done:
            raise SDVGError(
                f"SDVG Finish: only {s.block} of {s.config.num_blocks} blocks are committed. Put "
                "SDVG Block Loop Start/End around the four step nodes so every block is generated.")
        result = s.result()
        s.release()
        return sdvg.outputs(result, s.config, run.vae, run.prompt, run.node_id)

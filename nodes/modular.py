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

from sdvg_core.errors import SDVGError

from . import session as sdvg
from .sampler import sdvg_inputs
from .settings import make_config, optional_inputs

SESSION = "SDVG_SESSION"
CATEGORY = "SDVG/modular"
CHAIN = "SDVG Draft Block -> SDVG Verify Draft -> SDVG Regenerate Block -> SDVG Commit Block"


class ModularRun:
    """One video being built step by step, and which token is current."""

    def __init__(self, session, models: "sdvg.HostModels", prompt: str, node_id):
        self.session, self.models, self.prompt, self.node_id = session, models, prompt, node_id
        self.steps = 0
        self.loop_start_block: int | None = None  # blocks committed when Loop Start last ran

    def advance(self, token: "SessionToken", step: str, node: str):
        """Run one session step for the holder of the newest token; return (new token, its value)."""
        if token.steps != self.steps:
            raise SDVGError(
                f"{node}: this SDVG_SESSION value is stale (made after step {token.steps}, the session "
                f"is at step {self.steps}). One session output is wired into two step nodes, or a "
                f"value is reused after the session moved on. Chain the modular nodes in a single line: {CHAIN}.")
        self.models.ensure_loaded()
        try:
            value = self.session.step(step)
        except BaseException:
            self.session.release()
            raise
        self.steps += 1
        return SessionToken(self, self.steps), value


@dataclass(frozen=True, eq=False)
class SessionToken:
    """The value on an SDVG_SESSION wire (see the module docstring)."""

    run: ModularRun
    steps: int

    @property
    def session(self):
        return self.run.session

    def __repr__(self) -> str:
        s, upcoming = self.run.session, self.run.session.next_step
        nxt = "done" if upcoming is None else f"next '{upcoming[1]}'"
        return f"<SDVG session: block {s.block}/{s.config.num_blocks}, {nxt}>"


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
    OUTPUT_TOOLTIPS = ("Connect to SDVG Block Loop Start.",)
    FUNCTION = "begin"
    DESCRIPTION = ("Starts a step-by-step SDVG video with the SDVG Sampler's inputs. Put SDVG Block Loop "
                   f"Start/End around {CHAIN}; SDVG Finish gives the video.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": sdvg_inputs(), "optional": optional_inputs(), "hidden": {"unique_id": "UNIQUE_ID"}}

    def begin(self, drafter, target, vae, router, positive, prompt, unique_id=None, video=None, **settings):
        config = make_config(**settings)
        session, models = sdvg.start_session(drafter=drafter, target=target, vae=vae, router=router,
                                             positive=positive, prompt=prompt, config=config, video=video,
                                             node_id=unique_id)
        run = ModularRun(session, models, prompt, unique_id)
        return (SessionToken(run, 0),)


class _Step(_Stateful):
    """A node that runs one step of the session (``STEP``, a name of sdvg_core.speculative.STEPS)."""

    STEP = ""
    RETURN_TYPES = (SESSION,)
    RETURN_NAMES = ("session",)
    OUTPUT_TOOLTIPS = ("The session, for the next step.",)
    FUNCTION = "run_step"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": session_input()}

    def run_step(self, session):
        node = type(self).__name__
        token = _token(session, node)
        new, value = token.run.advance(token, self.STEP, node)
        return (new,) + ((value,) if len(self.RETURN_TYPES) > 1 else ())


class SDVGDraftBlock(_Step):
    STEP = "draft"
    DESCRIPTION = "The drafter (1.3B) proposes the block (context pass, 5 denoising passes) and decodes it; block 0 is left to the target."


class SDVGRouteBlock(_Step):
    STEP = "verify"
    RETURN_TYPES = (SESSION, "STRING")
    RETURN_NAMES = ("session", "decision")
    OUTPUT_TOOLTIPS = ("The session, for the next step.", "target, accepted, rejected or skipped.")
    DESCRIPTION = ("ImageReward scores every drafted frame against the prompt; the draft is kept when its "
                   "worst frame's score reaches tau.")


class SDVGRegenerateBlock(_Step):
    STEP = "regenerate"
    DESCRIPTION = "A rejected draft (and block 0) is generated by the target (14B) from the same noise; a kept draft passes through."


class SDVGCommitBlock(_Step):
    STEP = "commit"
    DESCRIPTION = "Keeps the block's latents and frames; the model of the next block rebuilds its KV cache from them."


class SDVGFinish(_Stateful):
    """The video of a finished session: the same outputs as SDVG Sampler."""

    RETURN_TYPES = ("IMAGE", "LATENT", "STRING", "IMAGE")
    RETURN_NAMES = ("frames", "latent", "stats_json", "timeline")
    FUNCTION = "finish"
    DESCRIPTION = "The finished video of a step-by-step session: the SDVG Sampler's four outputs."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": session_input("The session after its last SDVG Commit Block (from SDVG Block Loop End).")}

    def finish(self, session):
        token = _token(session, "SDVG Finish")
        s, run = token.session, token.run
        if not s.done:
            raise SDVGError(
                f"SDVG Finish: only {s.block} of {s.config.num_blocks} blocks are committed. Put "
                f"SDVG Block Loop Start/End around {CHAIN} so every block is generated.")
        result = s.result()
        s.release()
        return sdvg.outputs(result, s.config, run.prompt, run.node_id)

"""SDVG Block Loop Start / End: repeat the nodes between them once per block, by node expansion.

Modelled on the while-loop pair in ComfyUI's execution tests (TestWhileLoopOpen/Close). When
the session at Loop End still has blocks to make, Loop End returns a copy of every node
between Start and End (those downstream of Start and upstream of End, End included) as
``{"result": ..., "expand": graph}``; ComfyUI runs the copy, whose own Loop End repeats the
trick until the session is done. Nodes hanging off the loop body that do not lead to Loop End
(a preview, say) are not copied, so they see the first block only.

The copy is built as a plain API-format dict (what ``GraphBuilder.finalize()`` returns), so it
can be built and checked without ComfyUI.
"""

from __future__ import annotations

from typing import Any

from sdvg_core.errors import SDVGError

from .modular import CATEGORY, CHAIN, SESSION, SessionToken, _Stateful, _token

LOOP = "SDVG_LOOP"
RECURSE = "Recurse"  # id suffix of the copied Loop End, as in ComfyUI's while-loop test nodes


def is_link(value: Any) -> bool:
    """An API-format input that points at another node's output: [node_id, output_index]."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], (int, float)) and not isinstance(value[1], bool))


def _upstream(graph, node_id: str, parents: dict[str, list[str]]) -> None:
    """parents[p] = the nodes that take an input from p, for every ancestor p of node_id."""
    for value in graph.get_node(node_id).get("inputs", {}).values():
        if is_link(value):
            parent = value[0]
            if parent not in parents:
                parents[parent] = []
                _upstream(graph, parent, parents)
            parents[parent].append(node_id)


def loop_body(graph, start_id: str, end_id: str) -> list[str]:
    """Ids of the nodes between Loop Start and Loop End, both included, in a stable order."""
    children: dict[str, list[str]] = {}
    _upstream(graph, end_id, children)
    body, stack = {start_id: None}, [start_id]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in body:
                body[child] = None
                stack.append(child)
    body[end_id] = None
    return list(body)


def expand_loop(graph, start_id: str, end_id: str) -> tuple[dict, list]:
    """The next iteration: a copy of the loop body whose Loop Start takes what Loop End got.

    graph: anything with ``get_node(id) -> {"class_type", "inputs"}`` (ComfyUI's DynamicPrompt).
    Returns (API-format nodes to add, the link that stands for the copied Loop End's output).
    Copies are named ``<end_id>.<original id>`` (Loop End: ``<end_id>.Recurse``), unique because
    end_id is; each keeps its original node as display id, so the UI highlights the original.
    """
    body = loop_body(graph, start_id, end_id)
    prefix = f"{end_id}."
    new_id = {n: prefix + (RECURSE if n == end_id else n) for n in body}
    nodes = {}
    for n in body:
        original = graph.get_node(n)
        inputs = {key: [new_id[v[0]], v[1]] if is_link(v) and v[0] in new_id else v
                  for key, v in original.get("inputs", {}).items()}
        nodes[new_id[n]] = {"class_type": original["class_type"], "inputs": inputs,
                            "override_display_id": n}
    # The copied Start takes the session this End received: the current iteration's output.
    nodes[new_id[start_id]]["inputs"]["session"] = graph.get_node(end_id)["inputs"]["session"]
    return nodes, [new_id[end_id], 0]


class SDVGLoopStart(_Stateful):
    """Marks where the per-block loop begins; passes the session through."""

    RETURN_TYPES = (LOOP, SESSION)
    RETURN_NAMES = ("loop", "session")
    OUTPUT_TOOLTIPS = ("Connect to SDVG Block Loop End's 'loop'.", "Connect to SDVG Draft Block.")
    FUNCTION = "start"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Where the per-block loop begins: the nodes from here to SDVG Block Loop End run once "
                   "per block.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"session": (SESSION, {"tooltip": "From SDVG Begin."})}}

    def start(self, session):
        token = _token(session, "SDVG Block Loop Start")
        token.run.loop_start_block = token.session.block  # Loop End checks the body made progress
        return ("loop", token)


class SDVGLoopEnd(_Stateful):
    """Runs the nodes from Loop Start to here again until every block is committed."""

    RETURN_TYPES = (SESSION,)
    RETURN_NAMES = ("session",)
    OUTPUT_TOOLTIPS = ("The finished session: connect to SDVG Finish.",)
    FUNCTION = "end"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Runs the nodes since SDVG Block Loop Start again (ComfyUI node expansion) until every "
                   "block is committed, then passes the finished session on.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "loop": (LOOP, {"rawLink": True, "tooltip": "From SDVG Block Loop Start's 'loop'."}),
                "session": (SESSION, {"tooltip": "From SDVG Commit Block."}),
            },
            "hidden": {"dynprompt": "DYNPROMPT", "unique_id": "UNIQUE_ID"},
        }

    def end(self, loop, session, dynprompt=None, unique_id=None):
        token: SessionToken = _token(session, "SDVG Block Loop End")
        if token.session.done:
            return (token,)
        if token.session.block == token.run.loop_start_block:
            raise SDVGError(
                "SDVG Block Loop End: the nodes since SDVG Block Loop Start committed no block, so the "
                f"loop would never end. Chain {CHAIN} between them.")
        if dynprompt is None or unique_id is None or not is_link(loop):
            raise RuntimeError("SDVG Block Loop End needs ComfyUI's executor (dynprompt, unique_id, a linked 'loop').")
        nodes, result = expand_loop(dynprompt, loop[0], unique_id)
        return {"result": (result,), "expand": nodes}

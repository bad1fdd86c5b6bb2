"""``python -m sdvg_core {demo,generate,bench,tune,plan}``."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import SDVGError

COMMANDS = {
    "demo": ("sdvg_core.demo", "a tiny random-weight SDVG run: video, timeline and stats"),
    "generate": ("sdvg_core.generate", "generate videos with real weights from local files"),
    "bench": ("sdvg_core.bench", "time target-only, draft-only and SDVG side by side"),
    "tune": ("sdvg_core.tune", "pick tau offline from the scores a generate run logged"),
    "plan": ("sdvg_core.memory", "the memory a run needs on its GPU, and which cards it fits"),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default once: from argparse unless the help says it, a flag's False never."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdvg_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=getattr(module, "DESCRIPTION", module.__doc__),
                                 formatter_class=HelpFormatter)
        module.add_arguments(command)
        command.set_defaults(run=module.main)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except SDVGError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

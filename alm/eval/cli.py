"""`alm eval SUBCOMMAND ...`: the evaluation harness's command line.

Each subcommand is one module listed in SUBCOMMANDS. A module gives:

    NAME                 the subcommand's name (`alm eval NAME`)
    HELP                 one line for `alm eval --help`
    add_arguments(p)     adds its options to an argparse parser
    run(a) -> int        scores, reports through alm.eval.results.report, returns the exit status
                         (run(a, extra) when the module sets TAKES_TASK_OPTIONS: `alm eval run` passes
                         the options it does not know to the export's task)

A user's mistake is raised as alm.errors.UserError (one line, exit status 2).
"""

from __future__ import annotations

import argparse

from alm.eval import audio, retrieval, run, text, zeroshot

SUBCOMMANDS = (text, audio, retrieval, zeroshot, run)


def main(argv: list[str]) -> int:
    from alm.cli_format import DefaultsFormatter

    p = argparse.ArgumentParser(prog="alm eval", description="Score model outputs as the papers' reference libraries do; "
                                                            "each subcommand writes results.json and prints a table.")
    sub = p.add_subparsers(dest="subcommand", required=True, metavar="{" + ",".join(m.NAME for m in SUBCOMMANDS) + "}")
    for module in SUBCOMMANDS:
        module.add_arguments(sub.add_parser(module.NAME, help=module.HELP, description=module.HELP,
                                            formatter_class=DefaultsFormatter))
    a, extra = p.parse_known_args(argv)
    module = next(m for m in SUBCOMMANDS if m.NAME == a.subcommand)
    if getattr(module, "TAKES_TASK_OPTIONS", False):
        return module.run(a, extra)
    if extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    return module.run(a)

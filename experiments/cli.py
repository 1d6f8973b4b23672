"""What every experiment's absl front end shares: flag parsing and the exit on a bad config.

    if __name__ == "__main__":
        cli.run(main)

A ValueError (diffjax's argument checks raise them, naming the field: a bad `--config.<field>`, a
workdir holding a different model) ends the program with one line on stderr, `ValueError: ...`,
and exit code 2, as a usage error. Set DIFFJAX_TRACEBACK=1 to get the traceback instead.
"""

import os
import sys

from absl import app, flags

USAGE_ERROR = 2  # the exit code of a ValueError


def parse_flags(argv):
    """absl's flag parsing, with a bad `--config.<field>=<value>` (unknown field, ill-typed value)
    raised as a ValueError that names the overrides, before anything else runs.

    Args:
      argv: the command line (`sys.argv`).

    Returns:
      The remaining arguments, as `flags.FLAGS(argv)` returns them.
    """
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
        overrides = [a for a in argv[1:] if a.startswith("--config.")]
        raise ValueError(f"a config override is unknown or ill-typed ({error}); overrides: {overrides}") from error


def _usage_error(error: ValueError):
    if os.environ.get("DIFFJAX_TRACEBACK"):
        raise error
    print(f"ValueError: {' '.join(str(error).split())}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def run(main):
    """`app.run(main)` with `parse_flags`, a ValueError from either ending the program with one line
    on stderr and exit code 2 (`USAGE_ERROR`).

    Args:
      main: the experiment's `main(argv)`.

    Returns:
      Nothing: it exits with main's status.
    """

    def parser(argv):
        try:
            return parse_flags(argv)
        except ValueError as error:
            _usage_error(error)

    def guarded(argv):
        try:
            return main(argv)
        except ValueError as error:
            _usage_error(error)

    app.run(guarded, flags_parser=parser)

"""What every experiment's absl front end shares: flag parsing and the exit on a bad config.

    if __name__ == "__main__":
        cli.run(main)

A ValueError (diffjax's argument checks raise them, naming the field: a bad `--config.<field>`, a
workdir holding a different model) ends the program with one line on stderr, `ValueError: ...`,
and exit code 2, as a usage error. Set DIFFJAX_TRACEBACK=1 to get the traceback instead.
"""

import difflib
import glob
import os
import re
import runpy
import sys

from absl import app, flags
from ml_collections import config_flags

USAGE_ERROR = 2  # the exit code of a ValueError
NONFINITE_ERROR = 3  # the exit code of a run that turned NaN or inf (a FloatingPointError)
HELP = ("-h", "-?", "--help", "--helpshort", "--helpfull")
_REQUIRED = re.compile(r"Flag --(\w+) must have a value other than None")
_PRINT_CONFIG = flags.DEFINE_bool("print_config", False, "print the config's fields (type, value) and exit")


_default_config = []  # the spec `define_config` was given


def define_config(default: str | None, help_text: str):
    """`--config`, an ml_collections config file flag, whose default is applied when the flags are parsed.

    (ml_collections parses a default config file, with every `--config.<field>` override on the command
    line, when the flag is defined, i.e. on import, where a mistake in an override could not be reported
    in one line; `parse_flags` puts `--config=<default>` on the command line instead.)

    Args:
      default: the config used when the command line has no --config, e.g. "configs/steer.py"; or None.
      help_text: the flag's help.

    Returns:
      The flag holder (its `.value` is the ConfigDict once parsed).
    """
    _default_config[:] = [default]
    suffix = f" (default: {default})" if default else ""
    return config_flags.DEFINE_config_file("config", None, help_text + suffix, lock_config=True)


def config_fields(config, prefix: str = "") -> dict:
    """Every leaf field of a ConfigDict as {"optim.learning_rate": value, ...}."""
    out = {}
    for name, value in config.items():
        path = f"{prefix}{name}"
        if hasattr(value, "items"):
            out.update(config_fields(value, path + "."))
        else:
            out[path] = value
    return out


def describe_config(config) -> str:
    """The `--print_config` listing: one line `name: type = value` per field, in the config's order."""
    return "\n".join(f"{k}: {type(v).__name__} = {v!r}" for k, v in config_fields(config).items())


def _innermost(error: BaseException) -> BaseException:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return error


def _suggest(path: str, fields) -> str:
    """'; did you mean --config.X?' for the fields closest to `path` (whole path or last name), or ''."""
    last = {f.rsplit(".", 1)[-1]: f for f in fields}
    close = difflib.get_close_matches(path, fields, n=2, cutoff=0.6)
    close += [last[n] for n in difflib.get_close_matches(path.rsplit(".", 1)[-1], last, n=2, cutoff=0.6)]
    close = list(dict.fromkeys(close))[:2]
    return f"; did you mean {' or '.join('--config.' + c for c in close)}?" if close else ""


def _config_spec(argv) -> str | None:
    """The value of `--config=spec` (or `--config spec`) on the command line, or None."""
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _load_config(spec: str):
    """The config `--config=path.py:arg` names, loaded as ml_collections does, or None if it cannot be."""
    path, _, arg = spec.partition(":")
    try:
        get_config = runpy.run_path(path)["get_config"]
        return get_config(arg) if arg else get_config()
    except Exception:  # the parser's own error then says what is wrong
        return None


def _check_config_file(argv):
    """A ValueError naming `--config=` if its file does not exist, listing the .py files beside it."""
    spec = _config_spec(argv)
    if spec is None:
        return
    path = spec.partition(":")[0]
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or "."
        there = sorted(glob.glob(os.path.join(folder, "*.py")))
        listing = f"; {folder} has {', '.join(there)}" if there else ""
        raise ValueError(f"--config={spec}: no such file {path!r}{listing}")


def _flag_error(error: Exception, argv) -> ValueError:
    """A parsing error as a ValueError of one line that names the flag or field and what is wrong."""
    inner = _innermost(error)
    text = " ".join(str(inner).split())
    if match := _REQUIRED.search(text):
        return ValueError(f"--{match.group(1)} is required")
    spec = _config_spec(argv)
    if spec is not None and "parsing config file" in str(error):  # inner: what get_config or the import raised
        return ValueError(f"--config={spec}: {text}")
    config = _load_config(spec) if spec is not None else None
    overrides = [a[2:] for a in argv[1:] if a.startswith("--config.")]
    if config is not None and overrides:
        fields = config_fields(config)
        for override in overrides:
            path = override.split("=", 1)[0][len("config.") :]
            if path not in fields and not any(f.startswith(path + ".") for f in fields):
                return ValueError(f"--config.{path}: no such field{_suggest(path, fields)}")
        return ValueError(f"a config override is ill-typed ({text}); overrides: {['--' + o for o in overrides]}")
    return ValueError(text)


def parse_flags(argv):
    """absl's flag parsing, with every mistake raised as a one-line ValueError before anything runs:
    a bad config file or argument, a required flag left out (`--workdir is required`), an unknown
    `--config.<field>` (with the closest fields suggested) or an ill-typed value, an unknown flag,
    a `--workdir` that is (or is inside) a file.

    `--help` prints the program's docstring and its flags and exits 0; `--print_config` prints
    every field of the config (`describe_config`) and exits 0.

    Args:
      argv: the command line (`sys.argv`).

    Returns:
      The remaining arguments, as `flags.FLAGS(argv)` returns them.
    """
    if any(a in HELP for a in argv[1:]):
        print((sys.modules["__main__"].__doc__ or "").strip() + "\n")
        print(flags.FLAGS.main_module_help())
        for name in ("config", "print_config"):  # defined here, for every experiment
            if name in flags.FLAGS:
                print(f"  --{name}: {flags.FLAGS[name].help}")
        print("  --config.<field>=<value>: override one field of the config (see --print_config)")
        sys.exit(0)
    if _config_spec(argv) is None and _default_config and _default_config[0]:
        argv = [argv[0], f"--config={_default_config[0]}", *argv[1:]]
    _check_config_file(argv)
    try:
        remaining = flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
        # absl checks required flags after setting every value: --print_config needs none of them
        if not (_REQUIRED.search(str(error)) and "--print_config" in argv[1:] and _print_config()):
            raise _flag_error(error, argv) from error
    _print_config()
    _check_workdir()
    return remaining


def _check_workdir():
    """A ValueError naming `--workdir` if it names something that is not a directory (or under a file)."""
    workdir = flags.FLAGS["workdir"].value if "workdir" in flags.FLAGS else None
    if not workdir:
        return
    path = os.path.abspath(workdir)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)  # the nearest part of it that exists must be a directory
    if not os.path.isdir(path):
        raise ValueError(f"--workdir={workdir}: {path!r} is a file, not a directory")


def _print_config() -> bool:
    """Print `describe_config` of the parsed config and exit 0 if --print_config was given; else False."""
    config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
    if _PRINT_CONFIG.value and config is not None:
        print(describe_config(config))
        sys.exit(0)
    return False


def _one_line_exit(error: Exception, code: int):
    if os.environ.get("DIFFJAX_TRACEBACK"):
        raise error
    print(f"{type(error).__name__}: {' '.join(str(error).split())}", file=sys.stderr)
    sys.exit(code)


def run(main):
    """`app.run(main)` with `parse_flags`, a ValueError from either ending the program with one line
    on stderr and exit code 2 (`USAGE_ERROR`); a FloatingPointError from main (training turned NaN,
    `dj.training.loop.NonFiniteError`) ends it with one line and exit code 3 (`NONFINITE_ERROR`).

    Args:
      main: the experiment's `main(argv)`.

    Returns:
      Nothing: it exits with main's status.
    """

    def parser(argv):
        try:
            return parse_flags(argv)
        except ValueError as error:
            _one_line_exit(error, USAGE_ERROR)

    def guarded(argv):
        try:
            return main(argv)
        except ValueError as error:
            _one_line_exit(error, USAGE_ERROR)
        except FloatingPointError as error:
            _one_line_exit(error, NONFINITE_ERROR)

    app.run(guarded, flags_parser=parser)

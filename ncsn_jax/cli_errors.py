"""Turning mistakes in a command line into one clear message instead of a traceback.

Two places catch them: flag parsing (a missing config file, an unknown ``--config.x.y`` field, a value of
the wrong type, an unknown ``--mode``), and the run itself, where only :class:`ncsn_jax.errors.UserError`
counts as the user's mistake (a bad setting, a missing dataset or checkpoint, a workdir of another config,
diverged training). Both print ``error: <message>`` to stderr and exit with status 2 (130 for Ctrl-C);
nothing already written is touched. Every other exception is a bug and keeps its traceback.

Also here, for both command lines (``main.py`` and the converter): :func:`sample_command`, the command to
run next.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import os
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence

from absl import flags

from ncsn_jax import errors

EXIT_USER_ERROR = errors.UserError.exit_code


def fail(message: str, exit_code: int = EXIT_USER_ERROR) -> None:
    """Print ``error: message`` and exit with ``exit_code``."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(exit_code)


def _config_path(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def missing_config_file(argv: Sequence[str]) -> str | None:
    """The ``--config`` path if it names no file (ml_collections allows ``path:argument``), else None."""
    path = _config_path(argv)
    if path is None or os.path.isfile(path) or os.path.isfile(path.rsplit(":", 1)[0]):
        return None
    return path


def _load_config(path: str):
    spec = importlib.util.spec_from_file_location("_ncsn_user_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def unknown_config_fields(argv: Sequence[str]) -> list[str]:
    """Messages for each ``--config.a.b=v`` override naming a field the config file does not have."""
    path = _config_path(argv)
    if path is None:
        return []
    try:
        config = _load_config(path)
    except Exception:  # pylint: disable=broad-except  (a broken config file is reported by ml_collections)
        return []
    problems = []
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        dotted = arg[len("--config.") :].split("=", 1)[0]
        node, walked = config, []
        for part in dotted.split("."):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                where = "config" + "".join("." + w for w in walked)
                close = difflib.get_close_matches(part, keys, n=1)
                hint = f" Did you mean {where}.{close[0]}?" if close else ""
                problems.append(
                    f"unknown config field '{dotted}': {where} has no field '{part}'.{hint} "
                    f"Valid fields of {where}: {', '.join(sorted(keys))}."
                )
                break
            node, walked = node[part], walked + [part]
    return problems


def flags_parser(flag_values: flags.FlagValues) -> Callable[[list[str]], list[str]]:
    """An ``absl.app.run`` flags parser that reports bad flags as one line each, without a traceback."""

    def parse(argv: list[str]) -> list[str]:
        missing = missing_config_file(argv)
        if missing is not None:
            fail(f"no config file {missing}")
        problems = unknown_config_fields(argv)
        if problems:
            fail("\n".join(problems))
        try:
            return flag_values(argv)
        except flags.Error as e:
            fail(f"{e} (--helpfull lists the flags)")
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            fail(f"bad --config override: {e}")
        return argv  # unreachable: fail() exits

    return parse


def sample_command(argv: list[str], workdir: str) -> str:
    """The ``main.py --mode=sample`` command with the ``--config`` file and overrides of ``argv`` (the
    command line of ``main.py --mode=train`` or of the converter), to print as the next step."""
    config_args, i = [], 1
    while i < len(argv):
        arg = argv[i]
        separate_value = i + 1 < len(argv) and not argv[i + 1].startswith("-")
        if (arg == "--config" or (arg.startswith("--config.") and "=" not in arg)) and separate_value:
            config_args.append(f"{arg}={argv[i + 1]}")  # "--flag value" form
            i += 1
        elif arg.startswith(("--config=", "--config.", "--noconfig.")):
            config_args.append(arg)
        i += 1
    words = ["python", "main.py", *config_args, f"--workdir={workdir}", "--mode=sample"]
    return " ".join(shlex.quote(w) for w in words)


@contextlib.contextmanager
def user_errors(debug: bool = False) -> Iterator[None]:
    """Report :class:`~ncsn_jax.errors.UserError` raised inside the block as one ``error:`` message and its
    exit status (unless ``debug``); Ctrl-C outside a training loop likewise. Other exceptions propagate."""
    try:
        yield
    except errors.UserError as e:
        if debug:
            raise
        fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        if debug:
            raise
        fail("interrupted", errors.Interrupted.exit_code)

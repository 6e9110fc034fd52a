"""Turning mistakes in a command line into one clear message instead of a traceback.

Two places catch them: flag parsing (an unknown ``--config.x.y`` field, a value of the wrong type, an
unknown ``--mode``), and the run itself (errors that name a bad setting, a missing dataset or checkpoint,
diverged training). Both print ``error: <message>`` to stderr and exit with status 2; nothing already
written is touched. Internal bugs (any other exception) keep their traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import sys
from collections.abc import Callable, Iterator, Sequence

from absl import flags

EXIT_USER_ERROR = 2


def fail(message: str) -> None:
    """Print ``error: message`` and exit with :data:`EXIT_USER_ERROR`."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _config_path(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


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
        problems = unknown_config_fields(argv)
        if problems:
            fail("\n".join(problems))
        try:
            return flag_values(argv)
        except flags.Error as e:
            fail(f"{e}\nRun with --helpfull to list the flags.")
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            fail(f"bad --config override: {e}")
        return argv  # unreachable: fail() exits

    return parse


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that describe a problem with the request rather than a bug."""
    from ncsn_jax import checkpointing, datasets, generate, train  # pylint: disable=g-import-not-at-top

    return (
        ValueError,
        FileNotFoundError,
        PermissionError,
        OSError,
        checkpointing.CheckpointMismatchError,
        datasets.DatasetNotPreparedError,
        train.TrainingDivergedError,
        generate.NonFiniteSamplesError,
    )


@contextlib.contextmanager
def user_errors(debug: bool = False) -> Iterator[None]:
    """Report user errors raised inside the block as one message and exit status 2 (unless ``debug``)."""
    try:
        yield
    except user_error_types() as e:
        if debug:
            raise
        fail(str(e))

"""``l3hostd check-config``: validate a configuration file without starting anything.

It loads the file with the same code as ``l3hostd run`` and a reload
(:func:`l3hostd.config.load_config`; they run it in a child process, see
:mod:`l3hostd.config_isolated`, this command in process), so "OK" here means the daemon will
accept the file -- a reload may still refuse settings that need a restart.
Output goes to stdout, one line per problem, each naming the file and the YAML path, so
the result can be read by a person or checked by a script; the exit code follows the
command-line convention of DESIGN.md (0 valid, 2 bad input). It reads no password files and
opens no sockets: it can run anywhere, e.g. in CI against a config repository.
"""

from __future__ import annotations

import sys
from typing import TextIO

from l3hostd.config import DEFAULT_CONFIG_PATH, ConfigError, load_config

__all__ = ["EXIT_BAD_CONFIG", "EXIT_OK", "check_config"]

EXIT_OK = 0
EXIT_BAD_CONFIG = 2


def check_config(path: str = DEFAULT_CONFIG_PATH, out: TextIO | None = None) -> int:
    """Print ``OK`` and return 0, or print each error line and return 2."""
    stream = sys.stdout if out is None else out
    try:
        load_config(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=stream)
        return EXIT_BAD_CONFIG
    print("OK", file=stream)
    return EXIT_OK

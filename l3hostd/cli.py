"""``l3hostd``: ``run`` (the daemon), ``check-config``, ``demo`` (the namespace lab).

Exit codes: 0 success, 2 bad input (config errors, usage), 1 runtime failure.

``run`` validates the config file in a child process (:mod:`l3hostd.config_isolated`), so
pydantic and PyYAML's config loader never enter the daemon; ``check-config`` validates in
process (:mod:`l3hostd.cli_check`). Subcommands import only what they use.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

DEFAULT_CONFIG = "/etc/l3hostd/l3hostd.yaml"  # l3hostd.settings.DEFAULT_CONFIG_PATH


def _run(config_path: str) -> int:
    import uvloop

    from l3hostd import logs, memory
    from l3hostd.config_isolated import load_config_isolated
    from l3hostd.daemon import Daemon
    from l3hostd.settings import ConfigError

    try:
        config = load_config_isolated(config_path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 2
    logs.setup(config.logging.level, config.logging.format)
    memory.tune()
    daemon = Daemon(config, config_path)
    profile_to = os.environ.get("L3HOSTD_PROFILE")  # developer aid: cProfile to this file
    try:
        if profile_to:
            import cProfile

            cProfile.runctx("uvloop.run(daemon.run())", globals(), locals(), profile_to)
        else:
            uvloop.run(daemon.run())
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:  # found only when used, e.g. an unreadable password file
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 2
    except Exception:
        logging.getLogger("l3hostd").exception("fatal error")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="l3hostd", description="hypervisor L3 host daemon")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("--config", default=DEFAULT_CONFIG)
    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("--config", default=DEFAULT_CONFIG)
    demo = sub.add_parser("demo", help="run the namespace lab (needs root)")
    demo.add_argument("--keep", action="store_true", help="keep the lab up until Ctrl-C")
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args.config)
    if args.command == "check-config":
        from l3hostd.cli_check import check_config

        return check_config(args.config)
    from l3hostd.demo import main as demo_main

    return demo_main(keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())

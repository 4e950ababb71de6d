"""The command lines' shared flag parsing: bad input is one `error:` line and exit code 2.

absl reports a bad flag value or a missing required flag as 'FATAL Flags parsing error' with exit
code 1, and a config file whose `get_config` raises, or an unknown `--config.a.b` key, as a
traceback. `run(main)` is `absl.app.run` with a parser that turns each into one line naming the
flag or key, and exit code 2, before anything runs.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from absl import app, flags


def fail(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        if any(ln.startswith("Traceback") for ln in lines):  # get_config raised: say what
            lines = [lines[0].rstrip(":"), lines[-1]]
        fail("error: " + " ".join(lines) + " (--helpfull lists the flags)")
    except (AttributeError, KeyError) as e:  # ml_collections: unknown key in a locked config
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        raw = str(e.args[0] if e.args else e).replace("\\n", " ").replace("\\", "")
        detail = " ".join(raw.replace("'", "").split())
        fail(f"error: unknown config key ({detail}) in overrides {bad}")


def run(main) -> None:
    """absl.app.run(main) with `parse_flags`."""
    app.run(main, flags_parser=parse_flags)

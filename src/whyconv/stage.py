"""What every stage entry point shares: known errors become one clear message and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from whyconv.capacity import BudgetError
from whyconv.config import ParamsError
from whyconv.data import DataError


class StudyError(RuntimeError):
    """A stage found its inputs inconsistent (for example a training cell missing its results)."""


def run(main: Callable[[], None]) -> None:
    try:
        main()
    except (ParamsError, DataError, BudgetError, StudyError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

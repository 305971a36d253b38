"""Checking a factory's options by name: a leaf module (it imports nothing of frx), shared by the spec openers.

A spec's ``KEY=VALUE`` options go to a factory as keywords; an option it does not take is a one-line
``ValueError`` that names the option, the factory's kind and the options it does take, instead of the
``TypeError`` the call would raise. A factory taking ``**options`` takes anything.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

__all__ = ["option_names", "check_options"]


def option_names(signature: inspect.Signature, leading: int = 0, argument: str | None = None) -> list[str] | None:
    """The option names a factory with ``signature`` takes by keyword, after ``leading`` positional parameters and
    besides its spec ``argument``; ``None`` when it takes ``**options`` (anything)."""
    parameters = [p for p in signature.parameters.values() if p.name != "self"]
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:leading]
    return [p.name for p in parameters
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p not in positional and p.name != argument]


def check_options(where: str, taker: str, signature: inspect.Signature, options: Mapping[str, Any],
                  leading: int = 0, argument: str | None = None) -> None:
    """A ``ValueError`` naming the first option that ``signature`` does not take, ``taker`` and the ones it takes."""
    known = option_names(signature, leading, argument)
    unknown = [name for name in options if known is not None and name not in known]
    if unknown:
        takes = "the options " + ", ".join(known) if known else "no options"
        raise ValueError(f"{where}: unknown option {unknown[0]!r}; {taker} take {takes}")


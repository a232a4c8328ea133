"""Every name authcar takes from another library's internals, and nowhere else.

These are names their owners do not promise to keep: a leading underscore, or a module outside the
library's documented API. Each group is imported under its library's name, so when an upgrade moves
one, authcar fails at import with the library, its installed version and the versions authcar
supports, not with a bare ImportError from deep inside a module. tests/test_compat.py checks that
each name still behaves the way authcar uses it; pyproject.toml bounds uvicorn from above because
authcar subclasses its protocols (docs/decisions.md, "Dependency floors").
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from typing import Any


class InternalMoved(ImportError):
    """A library no longer has an internal authcar relies on."""


def moved(library: str, exc: BaseException) -> InternalMoved:
    """The error naming the library (its distribution name), the installed version and authcar's range."""
    if library == "python":
        installed = "Python " + sys.version.split()[0]
        supported = "authcar supports Python " + _requirement("python")
    else:
        try:
            installed = f"{library} {metadata.version(library)}"
        except metadata.PackageNotFoundError:
            installed = f"{library} (not installed)"
        supported = "authcar supports " + _requirement(library)
    return InternalMoved(f"{installed} no longer has an internal authcar uses ({exc}); {supported}")


def _requirement(library: str) -> str:
    """authcar's declared requirement on `library`, as its installed metadata states it."""
    try:
        if library == "python":
            return metadata.metadata("authcar")["Requires-Python"] or "(unstated)"
        for requirement in metadata.requires("authcar") or []:
            spec = requirement.split(";")[0].strip()
            name = re.match(r"[A-Za-z0-9._-]*", spec)
            if name and name.group(0).lower().replace("_", "-") == library.lower():
                return spec
    except metadata.PackageNotFoundError:
        pass
    return f"{library} (see pyproject.toml)"


# CPython's regex parser (re._parser and re._constants since 3.11): the policy compiler reads a
# pattern's structure to index rules by path and to prove patterns linear before using them.
try:
    import re._constants as sre_constants
    import re._parser as sre_parser
except ImportError as exc:
    raise moved("python", exc) from exc

# google-re2's pybind binding: its compile wrapper costs more than the match itself.
try:
    import re2

    re2_binding: Any = re2._re2
    re2_binding.RE2.Anchor.ANCHOR_START  # noqa: B018 - the attribute the matcher calls with
except (ImportError, AttributeError) as exc:
    raise moved("google-re2", exc) from exc

# Casbin's policy-line splitter: commas outside brackets and parentheses, quotes kept, so authcar
# reads a policy file exactly as Casbin's file adapter would.
try:
    from casbin.persist.adapter import _extract_tokens as split_policy_line
except ImportError as exc:
    raise moved("pycasbin", exc) from exc

# uvicorn's HTTP and WebSocket protocols, which authcar subclasses (authcar/protocol.py).
try:
    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError as exc:
    raise moved("uvicorn", exc) from exc

__all__ = [
    "FlowControl",
    "HttpToolsProtocol",
    "InternalMoved",
    "WebSocketsSansIOProtocol",
    "moved",
    "re2_binding",
    "split_policy_line",
    "sre_constants",
    "sre_parser",
]


# -- opentelemetry-sdk: the batch span processor's queue, to count what a full queue drops -----------


def batch_queue_length(processor: Any) -> int:
    """How many spans wait in the SDK's BatchSpanProcessor (a bounded deque that drops its oldest
    when full); the SDK exports that count only through its own metrics API."""
    try:
        return len(processor._batch_processor._queue)
    except AttributeError as exc:
        raise moved("opentelemetry-sdk", exc) from exc

"""A faithful double of ``nexigon-agent`` and the Nexigon hub (spec: nexigon-interface.md).

- :mod:`.hub` — the hub model in one state directory (properties, events, repositories,
  assets, issued URLs, injected errors, action log);
- :mod:`.cli` — the one-shot CLI (run through the wrapper script :mod:`.agent`);
- :mod:`.agent_socket` — the local API socket (handshake + executor frames);
- :mod:`.assets_http` — the loopback server behind issued URLs (Range, expiry);
- :mod:`.fixture` — :class:`NexigonDouble`, all of the above started together.

The submodules are imported lazily so that the CLI subprocess starts fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ActionError", "HubState", "NexigonDouble", "Release"]


def __getattr__(name: str) -> Any:
    if name in ("ActionError", "HubState"):
        from . import hub

        return getattr(hub, name)
    if name in ("NexigonDouble", "Release"):
        from . import fixture

        return getattr(fixture, name)
    raise AttributeError(name)

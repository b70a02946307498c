"""Hubs: where the desired version comes from, and where status and events go.

Registered by name; ``hub.kind`` picks one. Adding a hub is one module and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ota_daemon.hubs.base import Hub


def _static(**kwargs: Any) -> Hub:
    from ota_daemon.hubs.static import StaticHub

    if kwargs["config"].hub.verify == "tuf":
        from ota_daemon.signing.hub import SignedStaticHub

        return SignedStaticHub.from_config(**kwargs)

    return StaticHub.from_config(**kwargs)


def _nexigon(**kwargs: Any) -> Hub:
    from ota_daemon.hubs.nexigon import NexigonHub

    if kwargs["config"].hub.verify == "tuf":
        from ota_daemon.signing.nexigon import SignedNexigonHub

        return SignedNexigonHub.from_config(**kwargs)

    hub: Hub = NexigonHub.from_config(**kwargs)
    return hub


HUBS: dict[str, Callable[..., Hub]] = {"static": _static, "nexigon": _nexigon}


def get_hub(kind: str, **kwargs: Any) -> Hub:
    from ota_daemon.errors import ConfigError

    try:
        factory = HUBS[kind]
    except KeyError:
        raise ConfigError(f"unknown hub kind {kind!r}; valid: {', '.join(sorted(HUBS))}") from None
    return factory(**kwargs)

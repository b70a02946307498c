"""Installers: the tools that write the inactive slot and switch the boot order.

Registered by name; ``installer.kind`` picks one. Heavy optional dependencies (D-Bus for
RAUC) are imported inside the factory. Adding an installer is one module and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ota_daemon.installers.base import Installer


def _simulated(**kwargs: Any) -> Installer:
    from ota_daemon.installers.simulated import SimulatedInstaller

    return SimulatedInstaller.from_config(**kwargs)


def _rugix(**kwargs: Any) -> Installer:
    from ota_daemon.installers.rugix import RugixInstaller

    return RugixInstaller.from_config(**kwargs)


def _rauc(**kwargs: Any) -> Installer:
    from ota_daemon.installers.rauc import RaucInstaller

    return RaucInstaller.from_config(**kwargs)


def _swupdate(**kwargs: Any) -> Installer:
    from ota_daemon.installers.swupdate import SwupdateInstaller

    installer: Installer = SwupdateInstaller.from_config(**kwargs)
    return installer


INSTALLERS: dict[str, Callable[..., Installer]] = {
    "simulated": _simulated,
    "rugix": _rugix,
    "rauc": _rauc,
    "swupdate": _swupdate,
}


def get_installer(kind: str, **kwargs: Any) -> Installer:
    from ota_daemon.errors import ConfigError

    try:
        factory = INSTALLERS[kind]
    except KeyError:
        raise ConfigError(f"unknown installer {kind!r}; valid: {', '.join(sorted(INSTALLERS))}") from None
    return factory(**kwargs)

"""ota-daemon: keeps embedded Linux devices up to date with A/B system updates."""

__version__ = "0.1.0"

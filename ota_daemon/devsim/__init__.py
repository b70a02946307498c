"""A deterministic device simulator: the real engine, daemon loop, guard and telemetry on an
injected clock, over in-memory models of each installer and its bootloader.

- :mod:`.models` — RAUC, SWUpdate, Rugix and the try-once simulated bootloader as
  :class:`~ota_daemon.installers.base.Installer` implementations whose slot facts come from
  the real backends' own parsers (``parse_slot_status``, ``slot_info_from``,
  ``parse_system_info``); pinned against the real tools by ``tests/devsim/test_contract.py``.
- :mod:`.world` — one device: a static repository, a hub that can fail, power cuts at any
  enumerated cut point (the disk is what it was at the instant of the cut), reboots by each
  model's bootloader rules, the guard, and the invariants checked after every step.
- :mod:`.explore` — ``python -m ota_daemon.devsim explore --seed 1 --steps 2000``: a long
  seeded random exploration that prints scenarios, steps, cut points reached and violations.
"""

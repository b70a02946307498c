"""The HIL scenarios (hil-rig.md §4.7), written against :mod:`hil.rig.device` only."""

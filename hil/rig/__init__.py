"""Rig services: the Device interface and its targets, the hub double, the fault proxy,
the timeline recorder, images and the report."""

"""Hardware-in-the-loop rig for ota-daemon: one scenario suite, several targets (see README.md)."""

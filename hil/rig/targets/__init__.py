"""Device targets: ``sim`` (daemon processes and a simulated bootloader) and ``rpi``."""

"""Signed releases and staged rollouts on The Update Framework (python-tuf).

- :mod:`.layout`: what a signed target entry and a signed tag carry (shared by both sides);
- :mod:`.keys`: ed25519 keys on disk (securesystemslib signers);
- :mod:`.publish`: ``ota-daemon repo``'s signing side — init, publish, promote, rollout,
  refresh, rotate — writing assets first, then targets, snapshot, timestamp;
- :mod:`.fetcher`: TUF's fetcher on the daemon's own HTTP client, with TUF's size caps;
- :mod:`.verify`: the device side — TUF's update workflow, then the verified release;
- :mod:`.rollout`: the device's stable bucket and the schedule's current fraction;
- :mod:`.hub`: the static hub with ``hub.verify = "tuf"``.
"""

"""Nexigon hub: the co-located ``nexigon-agent``, over its local API socket or its CLI.

Facts: ``/work/shared/specs/nexigon-interface.md`` (§1 CLI, §3 socket, §4 properties and
events). Two transports, one behaviour:

- **socket** (``hub.agent_socket``): handshake ``NXAC`` + u32 BE length + JSON hello, then
  executor frames (u16 name / u32 JSON → u32 ``ActionResult``). One connection, reused for
  sequential calls; an overall deadline per call (``hub.timeout``); a stale connection is
  reopened once. Actions run as the device actor; the device id (``actor_GetActor``) is
  cached on disk.
- **CLI** (``hub.agent_bin``): one ``nexigon-agent`` process per command. ``device
  properties get`` prints compact JSON + newline, ``repositories …`` pretty JSON without one;
  exit 1 prints ``Error: …`` on stderr, exit 2 is a usage error.

The socket is used when it exists; a call falls back to the CLI when the socket is absent,
refuses the handshake, or breaks before answering. Errors are the same whichever way:
``RateLimited``/``Internal`` → :class:`TransientError`, no answer →
:class:`HubUnavailable`, ``Invalid``/``Forbidden``/not found → :class:`HubError`.

A pass with nothing to do (``read_config`` + ``resolve`` of a tag that did not move) costs
two hub actions over the socket, two agent runs over the CLI, and no writes: version details
are cached by version id under ``<state.dir>/nexigon``.

Issued URLs are credentials: they appear in no log line, event, status or exception text.

The package: ``protocol`` (the agent's wire constants and errors), ``transport`` (the socket
and the CLI), ``documents`` (what the hub sends and takes: paths, version details, events in
the replaced script's shape), ``hub`` (:class:`NexigonHub`: one behaviour over both
transports, the details cache, the status property). Everything is imported from here.
"""

from __future__ import annotations

from ota_daemon.config import read_legacy_config
from ota_daemon.errors import EventsPartlyDelivered
from ota_daemon.hubs.nexigon.documents import (
    SCRIPT_ATTRIBUTES,
    SCRIPT_BODIES,
    SEVERITIES,
    wire_event,
)
from ota_daemon.hubs.nexigon.hub import ANSWERED_RECENTLY, NexigonHub
from ota_daemon.hubs.nexigon.protocol import (
    MAGIC,
    PROTOCOL_VERSION,
    _ActionError,
    _Broken,
    _SocketUnavailable,
)
from ota_daemon.hubs.nexigon.transport import _AgentCli, _AgentSocket
from ota_daemon.ids import make_event_id

__all__ = [
    "ANSWERED_RECENTLY",
    "MAGIC",
    "PROTOCOL_VERSION",
    "SCRIPT_ATTRIBUTES",
    "SCRIPT_BODIES",
    "SEVERITIES",
    "EventsPartlyDelivered",
    "NexigonHub",
    "_ActionError",
    "_AgentCli",
    "_AgentSocket",
    "_Broken",
    "_SocketUnavailable",
    "make_event_id",
    "read_legacy_config",
    "wire_event",
]

"""The client: a connection that survives the network.

``with Client(host, port, token=..., cafile=...) as client`` is all most users need:
the client connects, authenticates, reconnects with backoff, queues and resends
until the server acknowledges, on a private I/O thread of its own that ends with it.

``Client(..., rooms=["general", "ops"])`` is in several rooms at once (protocol 3):
``join``/``leave`` change them, ``send(body, room=...)`` and ``history(room=...)`` pick
one (default :attr:`Client.room`), every room event carries ``.room``, and each
reconnect resumes every room from its own position (:attr:`Client.positions`).
Without ``rooms`` the client logs in the old way, into the server's default room.

``Client(..., loop=shared)`` with a :class:`ClientLoop` puts many clients on ONE I/O
thread instead (no thread per client). The loop outlives them and its owner closes
it. ``on_event`` callbacks run on that thread, so one slow or blocking callback holds
up every client on the loop; read :meth:`Client.events` elsewhere for slow work.

Layers (each imports only the ones below it; docs/architecture.md):

- :mod:`~securechat.client.api`: :class:`Client` and :class:`ClientLoop` re-exported
  here, the thread-safe user API (:mod:`~securechat.client.handle`: the send handle;
  :mod:`~securechat.client.view`: rooms, members and grants as the events tell);
- :mod:`~securechat.client.loop`, :mod:`~securechat.client.link`: the I/O on
  :class:`securechat.io.loop.IOLoop`, one thread owning every socket and SSL object;
- :mod:`~securechat.client.core`: the sans-I/O state machine of one link (no
  sockets, threads or clock), with :mod:`~securechat.client.phases` (the transition
  table), :mod:`~securechat.client.rooms` (the rooms to be in, per-room position and
  resume), :mod:`~securechat.client.sendqueue` (send queue, ack window),
  :mod:`~securechat.client.parts` (seq tracking, messages, checks),
  :mod:`~securechat.client.events` and :mod:`~securechat.client.backoff` (all pure).
"""

from .api import *  # noqa: F403
from .api import __all__ as __all__

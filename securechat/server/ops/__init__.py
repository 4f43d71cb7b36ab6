"""Operations: the admin HTTP listener (``--admin-listen``) with ``/metrics``,
``/healthz`` and ``/readyz``.

- :mod:`.config`: the admin settings and the loopback-or-TLS-and-token rule;
- :mod:`.httpwire`: HTTP/1.1 request heads and responses, pure (no sockets);
- :mod:`.admin_http`: the one admin thread, a ``selectors`` loop with hard caps;
- :mod:`.health`: liveness (every loop turning) and the named readiness checks;
- :mod:`.metrics`: the Prometheus collector, the only importer of prometheus_client;
- :mod:`.service`: wires those to a running server.

Nothing here runs per message: the server's threads count into plain ints
(:mod:`securechat.metering`) and the collector reads them at scrape time.
"""

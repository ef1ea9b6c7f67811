"""The daemon: the loops, systemd integration, status, doctor and the demo.

- ``service.Service``: the process (``fvagent run``), composing ``wiring`` (the parts built from the
  settings) and ``supervision`` (loops, heartbeats, watchdog, reload);
- ``verification.Verifier``: one verification, card to outbox;
- ``notify.Notifier``: sd_notify (READY, STATUS, WATCHDOG) with or without systemd-python;
- ``status.Status``: the one typed status (``build_status``, ``collect_status(settings)``), read by
  ``fvagent status``, STATUS=, doctor, GET /v1/status and the page; ``Status.to_json()`` is its JSON;
- ``doctor.run_checks(settings) -> list[Check]``: ``fvagent doctor``;
- ``demo.run_demo(...)``: ``fvagent demo``.

Heavy modules (dlib, uvicorn) are imported where they are used, never here.
"""

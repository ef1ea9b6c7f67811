"""The daemon: the loops, systemd integration, status, doctor and the demo.

- ``service.Service``: the process (``fvagent run``);
- ``verification.Verifier``: one verification, card to outbox;
- ``notify.Notifier``: sd_notify (READY, STATUS, WATCHDOG) with or without systemd-python;
- ``status.collect_status(settings) -> dict``: what ``fvagent status --json`` and GET /v1/status show;
- ``doctor.run_checks(settings) -> list[Check]``: ``fvagent doctor``;
- ``demo.run_demo(...)``: ``fvagent demo``.

Heavy modules (dlib, uvicorn) are imported where they are used, never here.
"""

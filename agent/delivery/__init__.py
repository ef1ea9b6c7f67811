"""Delivery: drains the outbox to the platform. It joins the two parts it sits between, the outbox
(``agent.outbox``) and the uplink (``agent.uplink``), so it belongs to neither.

``Uploader`` is the daemon's upload loop (docs/outbox.md); ``RateLimiter`` its request-rate cap.
"""

from agent.delivery.uploader import RateLimiter, Step, Uploader, UploaderSnapshot, UploaderState

__all__ = ["RateLimiter", "Step", "Uploader", "UploaderSnapshot", "UploaderState"]

"""The outbox audit: verifying the hash chain (``verify``), signed exports (``export``) and the
device's SM2 signing key (``signing``). The chain itself is written by ``agent.outbox.chain``.
"""

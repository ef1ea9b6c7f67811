"""The base layer: the values and rules that cross between the daemon (``agent``) and its drivers
(``drivers``): the error family, the ID card, the platform's records and outcomes, the time zone,
the masking of personal data, and the Protocols each part takes from the next.

It imports nothing from ``agent`` or ``drivers``; both import it.
"""

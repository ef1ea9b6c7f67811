"""ID-card reader drivers: ``fake``, ``sam-serial``, ``sam-usb``, ``sdt`` (see docs/drivers.md)."""

from drivers.card_reader.wlt import decode_wlt_to_jpeg

__all__ = ["decode_wlt_to_jpeg"]

"""ID card readers: the GA 467 SAM protocol over serial and USB, and a fake reader."""

"""In-band DTMF: key presses as the tones a phone menu hears (ITU-T Q.23 pairs).

Sent to the far end as agent audio, for outbound calls into phone menus (`send_dtmf`).
"""

from __future__ import annotations

import math
from array import array

KEYS = "123A456B789C*0#D"
ROWS = (697, 770, 852, 941)
COLUMNS = (1209, 1336, 1477, 1633)
TONE_S, GAP_S = 0.12, 0.08  # above Q.24's 40 ms minimum either way: menus hear each key
LEVEL = 0.3  # of full scale per tone: two together stay well clear of clipping


def frequencies(key: str) -> tuple[int, int]:
    index = KEYS.index(key.upper())
    return ROWS[index // 4], COLUMNS[index % 4]


def tones(digits: str, rate: int = 8000) -> bytes:
    """16-bit mono PCM at `rate`: each key's tone pair, then a gap of silence."""
    samples = array("h")
    for key in digits:
        low, high = frequencies(key)
        for n in range(int(TONE_S * rate)):
            t = n / rate
            value = LEVEL * (math.sin(2 * math.pi * low * t) + math.sin(2 * math.pi * high * t))
            samples.append(int(value * 32767 / 2))
        samples.extend([0] * int(GAP_S * rate))
    return samples.tobytes()

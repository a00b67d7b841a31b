"""x-request-id values: random version-4 UUIDs, cheaply.

`uuid.uuid4()` reads os.urandom (a syscall) and builds a UUID object: about 2 us.
Request ids need uniqueness, not secrecy, so one `getrandbits(128)` from the process's
Mersenne Twister (seeded from urandom at start; workers are exec'd, so no two share a
state) with the version and variant bits set is enough, at a fraction of the cost.
"""
from __future__ import annotations

import random

_getrandbits = random.getrandbits
_CLEAR = ~((0xF << 76) | (0x3 << 62))
_SET = (0x4 << 76) | (0x2 << 62)


def uuid4_fast() -> str:
    h = "%032x" % ((_getrandbits(128) & _CLEAR) | _SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

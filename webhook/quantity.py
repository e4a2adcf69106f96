"""Kubernetes resource quantities (`100m`, `0.5`, `64Mi`, `1e3`), parsed to their exact value.

The API server's rules (apimachinery's `resource.ParseQuantity`): a signed decimal number, then one
optional suffix, binary (`Ki` ... `Ei`), decimal (`n`, `u`, `m`, `k`, `M`, `G`, `T`, `P`, `E`) or an
exponent (`e3`, `E-2`, an int32); no spaces. A non-zero value is rounded up, away from zero, to a
multiple of 1n, so `1e-12` is `1n` and never 0. Values are compared exactly with `Decimal`, never
as floats: `0.1` plus the rest of a limit must not come out a hair above it.
"""

import decimal
import re
from dataclasses import dataclass
from decimal import Decimal

_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:(?P<binary>[KMGTPE]i)|(?P<decimal>[numkMGTPE])|[eE](?P<exponent>[+-]?\d+))?",
    re.ASCII,  # only 0-9 are digits to the API server
)
_BINARY = {suffix: 1024**power for power, suffix in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), 1)}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_INT32 = 2**31
# Exact arithmetic: enough digits for any value, an exponent range wide enough for any int32 exponent.
# Only scaling and multiplying by 1024^k happen under it, which never make an endless fraction.
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
_NANO = 9


@dataclass(frozen=True, slots=True)
class Quantity:
    """A quantity as written, and its value in base units (cores, bytes), rounded up to 1n."""

    text: str
    value: Decimal


def parse_quantity(text: str) -> Quantity:
    """Parse a quantity the way the API server does; ValueError says why a text isn't one."""
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    number = Decimal(match["number"])
    if match["binary"]:
        value = _EXACT.multiply(number, Decimal(_BINARY[match["binary"]]))
    else:
        written = match["exponent"] or "0"
        # Length first: int() refuses thousands of digits, and no int32 has more than 10.
        too_long = len(written.lstrip("+-").lstrip("0")) > 10
        exponent = _DECIMAL[match["decimal"]] if match["decimal"] else 0 if too_long else int(written)
        if too_long or not -_INT32 <= exponent < _INT32:
            raise ValueError(f"{text!r} has an exponent outside the 32-bit range Kubernetes accepts")
        value = number.scaleb(exponent, _EXACT)
    return Quantity(text, _round_up_to_nano(value))


def _round_up_to_nano(value: Decimal) -> Decimal:
    # to_integral_value is exact whatever the magnitude, so a huge exponent costs nothing here.
    rounding = decimal.ROUND_CEILING if value > 0 else decimal.ROUND_FLOOR
    return value.scaleb(_NANO, _EXACT).to_integral_value(rounding, _EXACT).scaleb(-_NANO, _EXACT)

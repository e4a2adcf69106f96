"""Kubernetes quantities, parsed as the API server parses them and compared exactly."""

from decimal import Decimal

import pytest

from webhook.quantity import parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", "0"),
        ("100m", "0.1"),
        ("0.1", "0.1"),
        (".5", "0.5"),
        ("1.", "1"),
        ("+1", "1"),
        ("2", "2"),
        ("250u", "0.00025"),
        ("7n", "0.000000007"),
        ("1k", "1000"),
        ("64Mi", str(64 * 2**20)),
        ("0.5Gi", str(2**29)),
        ("1.5Gi", str(3 * 2**29)),
        ("1Ei", str(2**60)),
        ("128M", "128000000"),
        ("1e3", "1000"),
        ("1E-2", "0.01"),
        ("1e+2", "100"),
        # Finer than 1n is rounded up, never to zero: "if you want some resources, you should get some".
        ("1e-12", "0.000000001"),
        ("0.30000000000000004", "0.300000001"),
        ("-0.0000000001", "-0.000000001"),
        # Exact beyond float and beyond Decimal's default 28 digits.
        (
            "12345678901234567890123456789.123456789Ki",
            "12641975194864197519486419752062.419751936",  # the number times 1024
        ),
    ],
)
def test_quantity_has_its_exact_value(text: str, value: str) -> None:
    assert parse_quantity(text).value == Decimal(value)
    assert parse_quantity(text).text == text


def test_values_that_differ_below_a_float_s_precision_compare_exactly() -> None:
    assert parse_quantity("1.000000001").value > parse_quantity("1").value
    assert parse_quantity("1000m").value == parse_quantity("1").value == parse_quantity("1e0").value
    assert parse_quantity("1024Ki").value == parse_quantity("1Mi").value
    assert parse_quantity("1M").value < parse_quantity("1Mi").value


@pytest.mark.parametrize(
    "text",
    [
        "",
        " 1",
        "1 ",
        "1 m",
        "m",
        "Mi",
        "1K",
        "1ki",
        "1mi",
        "1e",
        "1e1.5",
        "1.2.3",
        "0x10",
        "1_000",
        "٣",
        "1MiB",
        "NaN",
        "Infinity",
        "1e2147483648",
        "1e-2147483649",
        "1e" + "9" * 5000,
    ],
)
def test_text_that_is_not_a_quantity_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"quantity|exponent"):
        parse_quantity(text)


def test_huge_values_are_parsed_without_expanding_them() -> None:
    assert parse_quantity("1e2147483647").value > parse_quantity("1Ei").value
    assert parse_quantity("9" * 5000).value > 0
    assert parse_quantity("1e-2147483648").value == Decimal("1e-9")

"""The package's number formats (tables of the command line and the report)."""

import math

from tqsim.units import fmt_iv, fmt_num, fmt_pct, fmt_seconds


def test_percent_interval_and_number_formats():
    assert fmt_pct(0.1234) == "12.3%" and fmt_pct(1) == "100.0%"
    assert fmt_pct(None) == fmt_pct(math.nan) == fmt_pct(math.inf) == "–"
    assert fmt_iv(0.5, 0.25, None) == "50.0% [25.0%, –]"
    assert fmt_iv(2e-3, 1e-3, 0.5, fmt_seconds) == "2 ms [1 ms, 500 ms]"
    assert fmt_num(1.23456) == "1.23" and fmt_num(12.7, ".0f") == "13"
    assert fmt_num(None) == fmt_num("n/a") == "–"

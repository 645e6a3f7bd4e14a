"""Report section: the compiled residual attention against the vectorized one, and its bandwidth.

Appended to ``attnbench.report.markdown.SECTIONS``; renders only when the
results hold ``residual_attention`` timing rows (attnbench.report.bandwidth).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnbench.report import markdown
from attnbench.report.bandwidth import speed_and_bandwidth


def section(out: Path, env: dict[str, Any]) -> list[str]:
    return speed_and_bandwidth(out, env, "residual_attention", "Residual attention: compiled vs vectorized, bandwidth")


if section not in markdown.SECTIONS:
    markdown.SECTIONS.append(section)

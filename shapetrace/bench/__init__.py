"""``python -m shapetrace.bench``: what tracing costs, measured side by side.

1. The SD 1.5 journey on ``meta`` against ``torchinfo.summary`` (time, peak memory).
2. A real CPU forward traced against untraced (tiny UNet, SD 1.5 at 256x256).
3. Map capture memory over 1 against 50 denoising steps, and its time overhead.

>>> doc = run_bench(QUICK)                                        # doctest: +SKIP
>>> write_reports(doc, Path("reports"))                           # doctest: +SKIP
(PosixPath('reports/bench.json'), PosixPath('reports/bench.md'))
"""

from shapetrace.bench._markdown import to_markdown
from shapetrace.bench._settings import FULL, QUICK, Settings
from shapetrace.bench._suite import SCHEMA, run_bench
from shapetrace.bench.report import write_reports

__all__ = ["FULL", "QUICK", "SCHEMA", "Settings", "run_bench", "to_markdown", "write_reports"]

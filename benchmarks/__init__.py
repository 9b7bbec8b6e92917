"""``python -m benchmarks``: what tracing costs, measured side by side.

1. The SD 1.5 journey on ``meta`` against ``torchinfo.summary`` (time, peak memory).
2. A real CPU forward traced against untraced (tiny UNet, SD 1.5 at 256x256).
3. Map capture memory over 1 against 50 denoising steps, and its time overhead.
4. What ``check_attention_module`` and ``check_attn_processor`` cost, against their budgets.

>>> doc = run_bench(QUICK)                                        # doctest: +SKIP
>>> write_reports(doc, Path("reports"))                           # doctest: +SKIP
(PosixPath('reports/bench.json'), PosixPath('reports/bench.md'))
"""

from benchmarks._markdown import to_markdown
from benchmarks._settings import FULL, QUICK, Settings
from benchmarks._suite import SCHEMA, run_bench
from benchmarks.report import write_reports

__all__ = ["FULL", "QUICK", "SCHEMA", "Settings", "run_bench", "to_markdown", "write_reports"]

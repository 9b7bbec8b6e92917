"""``python -m benchmarks [--quick] [--out reports/] [--threads N]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks._settings import FULL, QUICK
from benchmarks._suite import run_bench
from benchmarks.report import write_reports


def main(argv: list[str] | None = None) -> int:
    """Run the bench, write bench.json and bench.md, print the Markdown; 0 on success."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions, one shared worker, no SD 1.5 on CPU")
    parser.add_argument("--out", type=Path, default=Path("reports"),
                        help="folder for bench.json and bench.md (default: reports/)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in the workers (default: 1)")
    parser.add_argument("--device", default=None, metavar="cuda",
                        help="also time the forwards of section 2 on this device (e.g. cuda)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.device not in (None, "cpu"):
        import torch

        if not args.device.startswith("cuda") or not torch.cuda.is_available():
            parser.error(f"--device {args.device}: torch sees no CUDA device here "
                         f"(torch {torch.__version__}); run without --device")
    settings = (QUICK if args.quick else FULL).with_threads(args.threads).with_device(args.device)

    def progress(msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    doc = run_bench(settings, progress=progress)
    json_path, md_path = write_reports(doc, args.out)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

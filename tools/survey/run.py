"""Run the survey, each case in a fresh folder as a new process (nice 10, 7 GB address space):

    SURVEY_DIR=/tmp/survey python tools/survey/fixtures.py /tmp/survey/fx
    SURVEY_DIR=/tmp/survey python tools/survey/run.py /tmp/survey/after.jsonl [filter]
    python tools/survey/evaluate.py /tmp/survey/after.jsonl

Against another checkout, put its tree first: PYTHONPATH=/path/to/main PYTHONDONTWRITEBYTECODE=1.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = Path(os.environ.get("SURVEY_DIR", "/tmp/survey"))
exec((HERE / "cases.py").read_text())
out = Path(sys.argv[1])
flt = sys.argv[2] if len(sys.argv) > 2 else ""
runs = BASE / "runs"
py = sys.executable


def run(argv=None, code=None, cwd=None):
    cmd = [py, "-m", "shapetrace", *argv] if code is None else [py, "-c", code]
    t = time.perf_counter()
    try:
        p = subprocess.run(
            ["nice", "-n", "10", "bash", "-c", 'ulimit -v 7000000; exec "$@"', "x", *cmd],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=int(os.environ.get("SURVEY_TIMEOUT", "120")),
        )
        rc, err, so = p.returncode, p.stderr, p.stdout
    except subprocess.TimeoutExpired as e:
        rc, err, so = (
            "timeout",
            (e.stderr or b"").decode(errors="replace")
            if isinstance(e.stderr, bytes)
            else (e.stderr or ""),
            "",
        )
    return rc, err, so, time.perf_counter() - t


with out.open("w") as f:
    for i, case in enumerate(CASES):
        if flt and flt not in case["id"]:
            continue
        cwd = runs / f"{i:03d}"
        if cwd.exists():
            shutil.rmtree(cwd)
        cwd.mkdir(parents=True)
        if case["pre"]:
            run(case["pre"], cwd=cwd)
        before = {str(p.relative_to(cwd)) for p in cwd.rglob("*")}
        rc, err, so, dt = run(case["argv"], case["py"], cwd)
        after = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
        lines = [l for l in err.strip().splitlines() if l.strip()]
        last = lines[-1] if lines else ""
        res = dict(
            i=i,
            id=case["id"],
            rc=rc,
            want=case["rc"],
            tb="Traceback" in err,
            last=last[:300],
            lastlen=len(last),
            nerr=len(lines),
            secs=round(dt, 1),
            files=[a for a in after if a not in before][:12],
            must=case["must"],
        )
        ok = rc == case["rc"] and not res["tb"]
        if case["rc"] != 0 or case["py"]:
            ok = ok and all(m in last for m in case["must"]) and len(last) < 500
            if case["rc"] != 0 and case["py"] is None:
                ok = (
                    ok
                    and bool(re.match(r"shapetrace( \w+)?: (error|interrupted)", last))
                    and not [f for f in res["files"] if not f.startswith("o/") or True]
                )
        res["ok"] = ok
        f.write(json.dumps(res) + "\n")
        f.flush()
        print(
            ("OK  " if ok else "BAD ")
            + f"{i:03d} {case['id'][:50]:50} rc={rc} {dt:5.1f}s {last[:150]}",
            flush=True,
        )

"""Classify survey rows as the issue did: answered well (the exit status wanted, one line naming
the flag/value, nothing left), poorly (the right status, but the line misses what it should
name, or is too long), or wrongly (a traceback, a wrong status, a run that should have been
refused). FIX corrects expectations cases.py got wrong; NOT_MINE are tracer/store API cases
other issues own. Usage: python tools/survey/evaluate.py before.jsonl after.jsonl"""

import json
import re
import sys
from collections import Counter
from pathlib import Path

FIX = {  # case id -> (expected rc, must) where the first expectation was wrong
    "trace --batch 1000000000": (0, []),  # meta: free, a legitimate trace
    "trace --height 8192 cpu sd15": (2, ["needs about"]),
    "trace --device 'CPU'": (0, []),  # accepted in any case
    "maps 8192 sd15 memory": (2, ["needs about"]),
    "maps folder tiny (no te)": (0, []),  # the packaged tiny text encoder fits
    "trace --json markup path": (2, ["--json"]),  # '[bold]x[' is a folder that does not exist
}
NOT_MINE = {
    "api trace_model torch.device",
    "api trace_model dtype name",
    "api trace_model dtype bad",
    "api store places middle",
    "api store resolutions 0",
    "api tracer twice",
    "api probe object",
    "api trace_model device cuda:x",
    "api trace_model height float",
    "api trace_model batch True",
}


def verdict(r):
    want, must = FIX.get(r["id"], (r["want"], r["must"]))
    if r["id"].startswith("api") and any(must):  # an API refusal: a ShapeTraceError, named
        raised = r["last"].startswith("shapetrace.errors.")
        named = all(m in r["last"] for m in must) and r["lastlen"] < 600
        if r["rc"] == 0 or not raised:
            return "wrongly"
        return "well" if named else "poorly"
    if r["rc"] != want or r["tb"]:
        return "wrongly"
    if want == 0 and not r["id"].startswith("api"):
        return "well"
    last = r["last"]
    ok = all(m in last for m in must) and r["lastlen"] < 600
    if want != 0 and not r["id"].startswith("api"):
        ok = ok and bool(re.match(r"shapetrace( \w+)?: ", last)) and not r["files"]
    return "well" if ok else "poorly"


for name in sys.argv[1:]:
    rows = [json.loads(line) for line in Path(name).read_text().splitlines()]
    mine = [r for r in rows if r["id"] not in NOT_MINE]
    c = Counter(verdict(r) for r in mine)
    o = Counter(verdict(r) for r in rows if r["id"] in NOT_MINE)
    print(
        name,
        len(rows),
        "cases;",
        len(mine),
        "in this issue's scope:",
        dict(c),
        "| tracer/store API (lead, maps):",
        dict(o),
    )
    if "-v" in sys.argv[0:1] or True:
        for r in mine:
            v = verdict(r)
            if v != "well":
                print(f"   {v:8} {r['i']:03d} {r['id'][:45]:45} rc={r['rc']} {r['last'][:110]}")

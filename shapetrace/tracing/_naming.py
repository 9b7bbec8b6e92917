"""Names read off the data flow: a layer's kind, its projections' stage names, its branches.

>>> kind_of((Segment("hidden", 4096),), (Segment("context", 77),))
'cross'
>>> joint = (Segment("hidden", 4096), Segment("context", 333))
>>> kind_of(joint, joint)
'joint'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from shapetrace.stages import Segment, Stage
from shapetrace.tracing._flow import segments_sources

if TYPE_CHECKING:
    from shapetrace.tracing._call import BranchState, Projection

__all__ = ["branch_name", "kind_of", "projection_stages"]

_STAGE_OF_SOURCE = {"hidden": "", "context": "context_", "ip": "ip_", "other": "other_"}


def kind_of(q: tuple[Segment, ...] | None, k: tuple[Segment, ...] | None) -> str | None:
    """``self`` when the keys come from the queries' own tokens, ``cross`` when from other
    tokens only, ``joint`` when from both (one softmax over image and text); None when either
    side's tokens are unknown."""
    qs, ks = segments_sources(q), segments_sources(k)
    if not qs or not ks:
        return None
    if qs == ks and len(qs) == 1:
        return "self"
    if not qs & ks:
        return "cross"
    return "joint"


def branch_name(k: tuple[Segment, ...] | None, taken: Sequence[str]) -> str:
    """A further attention computation is named by where its keys came from: ``ip`` for an
    IP-Adapter's image-prompt tokens (``ip.1``, ``ip.2`` for more adapters)."""
    base = "+".join(sorted(segments_sources(k))) or "other"
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}.{n}"
    return name


def projection_stages(
    projections: Mapping[int, Projection], branch: BranchState, *, keys_only: bool = False
) -> dict[str, Stage]:
    """``query``, ``key``, ``value`` (and ``context_query`` ... in joint attention) from the
    projections the branch's score and attended ops used. The projection of the layer's own
    tokens gets the plain name; a projection of other tokens gets it when it is the only one
    (cross-attention's keys), else its source's prefix."""
    roles = [("key", branch.k_lineage), ("value", branch.v_lineage)]
    if not keys_only:
        roles.insert(0, ("query", branch.q_lineage))
    out: dict[str, Stage] = {}
    for role, lineage in roles:
        groups: dict[str, list[Projection]] = {}
        for pid in sorted(lineage):
            proj = projections.get(pid)
            if proj is None:
                continue
            source = "hidden" if "hidden" in proj.sources else min(proj.sources, default="other")
            groups.setdefault(source, []).append(proj)
        primary = "hidden" if "hidden" in groups else next(iter(groups), None)
        for source, projs in groups.items():
            prefix = "" if source == primary else _STAGE_OF_SOURCE.get(source, f"{source}_")
            first = projs[0]
            extra = f" (+ {len(projs) - 1} more added)" if len(projs) > 1 else ""
            out[f"{prefix}{role}"] = Stage(f"{prefix}{role}", first.shape, op=first.op() + extra)
            if keys_only and role == "key" and first.in_shape:
                note = "image-prompt tokens" if source == "ip" else f"{source} tokens"
                out.setdefault("context", Stage("context", first.in_shape, op=note))
    return out

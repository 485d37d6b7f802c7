"""The worked examples of docs/cache.md are what the cache does: every table row is recomputed from a cache run."""
import re
from pathlib import Path

import pytest

from pipeline.policies import build_policy
from helpers import B, F, drive, make_kv, ramp_qkv


DOC = Path(__file__).resolve().parents[1] / "docs" / "cache.md"

# (text the table follows, its n-th table after it, policy parameters, candidate score of (frame, token))
TABLES = [
    ("### `self_forcing`", 0, dict(mode="self_forcing", local_attn_size=12, sink_size=3), None),
    ("### `deep_sink`", 0, dict(mode="deep_sink", local_attn_size=21, sink_size=14), None),
    ("### `infinite_forcing`", 0, dict(mode="infinite_forcing", local_attn_size=6, sink_size=1), None),
    ("LongLive v1.0 infinite mode", 0, dict(mode="infinite_forcing", local_attn_size=12, sink_size=3), None),
    ("### `deep_sink_pc`", 0, dict(mode="deep_sink_pc", sink_size=10, budget=16, recent=4), "older"),
    ("### `deep_sink_pc`", 1, dict(mode="deep_sink_pc", sink_size=10, budget=16, recent=4, realign_topc=True),
     "older"),
]


def doc_rows(marker, which):
    """{f: (event, cache)} of the ``which``-th table after ``marker`` in docs/cache.md."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(marker))
    tables, current = [], None
    for line in lines[start:]:
        m = re.match(r"\| (\d+) \| ([^|]+) \| ([^|]+) \|", line)
        if m:
            current = {} if current is None else current
            current[int(m[1])] = (m[2].split()[0], re.sub(r"\s*\(.*\)", "", m[3]).strip())
        elif current is not None and not line.startswith("|"):
            tables.append(current)
            current = None
    return tables[which]


def segments(frames, pos):
    """``a–b@c–d`` runs of consecutive frames at consecutive positions."""
    runs = []
    for fr, t in zip(frames, pos):
        if runs and fr == runs[-1][1] + 1 and t == runs[-1][3] + 1:
            runs[-1][1], runs[-1][3] = fr, t
        else:
            runs.append([fr, fr, t, t])
    span = lambda a, b: f"{a}" if a == b else f"{a}–{b}"  # noqa: E731
    return " ".join(f"{span(a, b)}@{span(c, d)}" for a, b, c, d in runs)


@pytest.mark.parametrize("marker,which,cfg,score", TABLES)
def test_doc_table_matches_the_cache(marker, which, cfg, score):
    rows = doc_rows(marker, which)
    assert len(rows) >= 2
    trace = []
    policy = build_policy(trace=trace.append, **cfg)
    kv = make_kv(policy)
    qkv = ramp_qkv((lambda fr, tok: -fr) if score == "older" else (lambda fr, tok: fr))
    seen = set()
    for f in drive(kv, max(rows) // B + 1, qkv):
        if f in rows:
            c = kv.layers[0]
            events = [r["event"] for r in trace if r["chunk_start"] == f and r["layer"] == 0]
            assert rows[f] == (events[0] if events else "–", segments(c.frame[0, c.order()[::F]].tolist(),
                                                                      c.t_pos[0, c.order()[::F]].tolist())), f
            seen.add(f)
    assert seen == set(rows)

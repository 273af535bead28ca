"""``ditq bench single-graph`` on the tiny model: one graph with per-group inputs vs G graphs, written to files."""

from __future__ import annotations

import json

from ditq.cli.main import main


def test_bench_single_graph_writes_latency_memory_and_exactness(tmp_path, capsys):
    out = tmp_path / "sg"
    assert main(["-q", "bench", "single-graph", "-o", str(out), "--models", "tiny", "--repeats", "2",
                 "--calib-steps", "4", "--groups", "2", "--batch", "2", "--threads", "1"]) == 0
    result = json.loads((out / "single_graph.json").read_text())
    (row,) = result["models"]
    assert row["model"] == "tiny" and row["groups"] == 2 and len(row["max_rel_diff_per_group"]) == 2
    assert max(row["max_rel_diff_per_group"]) < 1e-4  # the ratio Muls are exact
    assert row["latency"]["g_sessions"]["repeats"] == row["latency"]["single_graph"]["repeats"] == 2
    assert all(row["memory"][k]["session_rss_bytes"] > 0 for k in ("g_sessions", "single_graph"))
    # the single graph stores the weights once: smaller on disk than the G graphs together
    assert row["graph_bytes"]["single_graph"] < row["graph_bytes"]["g_graphs_total"]
    assert "| tiny (" in (out / "single_graph.md").read_text()
    assert "single_graph.json" in capsys.readouterr().out

"""`infill-lsp bench --storm`, reduced to 15 s for CI: a simulated typist against the server as an
editor starts it (the default model, stdio). Latency targets live in the benchmark; this test
holds what must never fail: every request answered, no death, bounded memory, nothing kept after
every document is closed."""

import asyncio
import sys

from infill_lsp.storm import run_storm


def test_fifteen_second_storm_with_the_default_model():
    command = [sys.executable, "-m", "infill_lsp", "--log-level", "ERROR", "serve"]
    report = asyncio.run(run_storm(15, 50, 200, seed=3, command=command, options={"seed": 3}, idle_requests=5))
    table = report.table()
    # Preconditions: the typist really stormed (not a handful of requests), across documents.
    assert table["requests"] > 300, table
    assert report.opens >= 5 and report.closes >= 3 and report.client_cancels > 50, report
    assert report.model == "infill-small"
    # What must hold.
    assert report.server_alive
    assert table["answered"] == table["requests"], table
    assert table["unanswered"] == 0 and table["errors"] == 0, table
    assert table["cancelled"] > 0 and table["empty"] > 0  # both kinds of answer were exercised
    assert table["rss_growth"] < 50, table
    assert (report.open_after_close, report.cached_after_close) == (0, 0)

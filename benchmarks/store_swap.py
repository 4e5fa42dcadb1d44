"""Certificate store swap cost: fsynced swaps per second on this machine's temporary folder.

Run: .venv/bin/python benchmarks/store_swap.py [--swaps 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.pki import bundle, make_ca, make_leaf

from edgecert.adapters.filestore import FileCertStore
from edgecert.core.validate import Expectations
from edgecert.ports import CertPaths

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--swaps", type=int, default=200)
    swaps = parser.parse_args().swaps
    ca = make_ca("Bench CA", not_before=NOW - timedelta(days=1))
    leaves = [bundle(make_leaf(ca, "device-1", not_before=NOW - timedelta(hours=1)), ca) for _ in range(8)]
    expect = Expectations(anchors=(ca.cert,), subject="CN=device-1")
    store = FileCertStore(now=lambda: NOW)
    with tempfile.TemporaryDirectory() as tmp:
        paths = CertPaths(Path(tmp) / "c" / "cert.pem", Path(tmp) / "k" / "key.pem", Path(tmp) / "c" / "chain.pem")
        durations = []
        for i in range(swaps):
            started = time.perf_counter()
            store.install(paths, leaves[i % len(leaves)], expect)
            durations.append(time.perf_counter() - started)
    durations.sort()
    print(
        f"{swaps} swaps of cert+key+chain with validation and fsync: "
        f"median {statistics.median(durations) * 1e3:.2f} ms, "
        f"p95 {durations[int(len(durations) * 0.95)] * 1e3:.2f} ms, {swaps / sum(durations):.0f} swaps/s"
    )


if __name__ == "__main__":
    main()

"""pytest-benchmark helpers: MB/s from the median, and a summary table.

pytest-benchmark's own table has no throughput column, so each benchmark
records its MB/s (1 MB = 10**6 bytes of input) in ``extra_info`` (kept in
``--benchmark-json``) and in a table printed at the end of the run.
"""

import pytest

_RESULTS = pytest.StashKey[list]()


def pytest_configure(config):
    config.stash[_RESULTS] = []


@pytest.fixture
def throughput(benchmark, request):
    """``throughput(nbytes)``, after ``benchmark(fn)``: record MB/s."""

    def record(nbytes):
        if benchmark.stats is None:  # --benchmark-disable: nothing timed
            return
        median = benchmark.stats.stats.median
        rate = nbytes / median / 1e6
        benchmark.extra_info["MB/s"] = round(rate, 1)
        request.config.stash[_RESULTS].append(
            (benchmark.group or "", benchmark.name, median, rate))

    return record


def pytest_terminal_summary(terminalreporter, config):
    rows = config.stash.get(_RESULTS, [])
    if not rows:
        return
    write = terminalreporter.write_line
    terminalreporter.section("throughput (median)")
    width = max(len(name) for _, name, _, _ in rows)
    group = None
    for row_group, name, median, rate in sorted(rows):
        if row_group != group:
            group = row_group
            write(f"-- {group}")
        write(f"   {name:<{width}}  {median * 1e6:12.2f} us"
              f"  {rate:10.1f} MB/s")

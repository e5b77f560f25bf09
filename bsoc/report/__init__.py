"""Comparison report: benchmark.json (+ traces, sweep) -> report.html and report.md with figures."""

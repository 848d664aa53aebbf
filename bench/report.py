"""Turning samples into the reported figures, the comparison and the budget verdicts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loadgen import Sample


@dataclass
class PassResult:
    ok: int
    failed: int
    errors: dict[str, int]
    wall_s: float
    requests_per_s: float
    chunks_per_s: float
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    e2e_p50_ms: float
    e2e_p99_ms: float
    client_cpu_pct: float
    gateway_cpu_s: float
    gateway_cpu_pct: float
    gateway_us_per_chunk: float
    gateway_us_per_request: float
    gateway_peak_rss_mb: float


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(
    samples: list[Sample], wall: float, client_cpu: float, gateway_cpu: float, rss: float
) -> PassResult:
    good = [s for s in samples if s.ok]
    errors: dict[str, int] = {}
    for sample in samples:
        if not sample.ok:
            errors[sample.error or "?"] = errors.get(sample.error or "?", 0) + 1
    chunks = sum(s.chunks for s in good)
    gaps = [gap for s in good for gap in s.gaps]
    ttfts = [s.ttft for s in good if s.ttft is not None]
    e2es = [s.e2e for s in good]
    ms = 1000.0
    return PassResult(
        ok=len(good),
        failed=len(samples) - len(good),
        errors=errors,
        wall_s=round(wall, 3),
        requests_per_s=round(len(good) / wall, 1),
        chunks_per_s=round(chunks / wall, 1),
        tokens_per_s=round(chunks / wall, 1),
        ttft_p50_ms=round(percentile(ttfts, 50) * ms, 3),
        ttft_p99_ms=round(percentile(ttfts, 99) * ms, 3),
        itl_p50_ms=round(percentile(gaps, 50) * ms, 3),
        itl_p99_ms=round(percentile(gaps, 99) * ms, 3),
        e2e_p50_ms=round(percentile(e2es, 50) * ms, 3),
        e2e_p99_ms=round(percentile(e2es, 99) * ms, 3),
        client_cpu_pct=round(100 * client_cpu / wall, 1),
        gateway_cpu_s=round(gateway_cpu, 3),
        gateway_cpu_pct=round(100 * gateway_cpu / wall, 1),
        gateway_us_per_chunk=round(1e6 * gateway_cpu / chunks, 2) if chunks else 0.0,
        gateway_us_per_request=round(1e6 * gateway_cpu / len(good), 1) if good else 0.0,
        gateway_peak_rss_mb=round(rss, 1),
    )


def compare(direct: PassResult, gateway: PassResult) -> dict[str, float]:
    def ratio(a: float, b: float) -> float:
        return round(a / b, 4) if b else 0.0

    return {
        "tokens_per_s_ratio": ratio(gateway.tokens_per_s, direct.tokens_per_s),
        "requests_per_s_ratio": ratio(gateway.requests_per_s, direct.requests_per_s),
        "added_ttft_p50_ms": round(gateway.ttft_p50_ms - direct.ttft_p50_ms, 3),
        "added_ttft_p99_ms": round(gateway.ttft_p99_ms - direct.ttft_p99_ms, 3),
        "added_itl_p99_ms": round(gateway.itl_p99_ms - direct.itl_p99_ms, 3),
        "added_e2e_p50_ms": round(gateway.e2e_p50_ms - direct.e2e_p50_ms, 3),
    }


ROWS = [
    ("requests ok / failed", lambda p: f"{p['ok']} / {p['failed']}"),
    ("requests/s", lambda p: p["requests_per_s"]),
    ("tokens/s", lambda p: p["tokens_per_s"]),
    ("TTFT p50 / p99 ms", lambda p: f"{p['ttft_p50_ms']:.1f} / {p['ttft_p99_ms']:.1f}"),
    ("ITL p50 / p99 ms", lambda p: f"{p['itl_p50_ms']:.2f} / {p['itl_p99_ms']:.2f}"),
    ("e2e p50 / p99 ms", lambda p: f"{p['e2e_p50_ms']:.1f} / {p['e2e_p99_ms']:.1f}"),
    ("load generator CPU %", lambda p: p["client_cpu_pct"]),
    ("gateway CPU % of a core", lambda p: p["gateway_cpu_pct"] or "-"),
    ("gateway µs CPU / chunk", lambda p: p["gateway_us_per_chunk"] or "-"),
    ("gateway µs CPU / request", lambda p: p["gateway_us_per_request"] or "-"),
    ("gateway peak RSS MB", lambda p: p["gateway_peak_rss_mb"] or "-"),
]


def table(results: list[dict[str, Any]]) -> str:
    header = "| figure | " + " | ".join(
        f"{r['scenario']['name']} direct | {r['scenario']['name']} gateway" for r in results
    )
    lines = [header + " |", "|---" * (1 + 2 * len(results)) + "|"]
    for label, cell in ROWS:
        cells = [f"{cell(r['direct'])} | {cell(r['gateway'])}" for r in results]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    compared = sorted({key for r in results for key in r["compare"]})
    for key in compared:
        cells = [f"| {r['compare'][key]}" for r in results]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


BUDGET: dict[str, list[tuple[str, str, str, float]]] = {
    # scenario: [(label, where, key, limit)]; "min" limits are lower bounds.
    "S1": [
        ("tokens/s vs direct >= 99%", "compare", "tokens_per_s_ratio", -0.99),
        ("added TTFT p50 <= 2 ms", "compare", "added_ttft_p50_ms", 2.0),
        ("added TTFT p99 <= 10 ms", "compare", "added_ttft_p99_ms", 10.0),
        ("added ITL p99 <= 2 ms", "compare", "added_itl_p99_ms", 2.0),
        ("gateway CPU <= 30% of its core", "gateway", "gateway_cpu_pct", 30.0),
    ],
    "S2": [("gateway CPU <= 15 µs per chunk", "gateway", "gateway_us_per_chunk", 15.0)],
    "S3": [
        ("gateway CPU <= 300 µs per request", "gateway", "gateway_us_per_request", 300.0),
        ("requests/s vs direct >= 50%", "compare", "requests_per_s_ratio", -0.5),
    ],
    "S4": [("added median latency <= 0.5 ms", "compare", "added_e2e_p50_ms", 0.5)],
    "S5": [
        ("added TTFT p50 <= 300 ms", "compare", "added_ttft_p50_ms", 300.0),
        ("peak RSS <= 150 MB", "gateway", "gateway_peak_rss_mb", 150.0),
    ],
    "S6": [
        ("added TTFT p50 <= 10 ms", "compare", "added_ttft_p50_ms", 10.0),
        ("added TTFT p99 <= 25 ms", "compare", "added_ttft_p99_ms", 25.0),
    ],
}


def budget_lines(results: list[dict[str, Any]]) -> list[str]:
    lines = ["Budget:"]
    for result in results:
        name = result["scenario"]["name"]
        for label, where, key, limit in BUDGET.get(name, []):
            value = result[where][key]
            met = value >= -limit if limit < 0 else value <= limit
            lines.append(f"- {name} {label}: {value} -> {'met' if met else 'MISSED'}")
        if name == "S5":
            failed = result["gateway"]["failed"]
            verdict = "met" if not failed else "MISSED"
            lines.append(f"- S5 every stream completes: {failed} failed -> {verdict}")
    return lines

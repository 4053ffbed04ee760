"""Turn a Locust run's CSV files (and the server's /metrics before and after) into a summary
and a PNG of throughput and p50/p95/p99 latency over time."""

import csv
import math
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

PERCENTILES = ("50%", "95%", "99%")
# Server-side counters summed over labels (per model, endpoint, status) for the summary.
SERVER_SERIES = ("diffres_requests_total", "diffres_input_frames_total",
                 "diffres_output_frames_total", "diffres_batch_size_sum",
                 "diffres_batch_size_count", "diffres_audio_seconds_total")


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_stats(prefix: Path) -> list[dict]:
    """Rows of ``<prefix>_stats.csv``: one per request name, then "Aggregated"."""
    with open(f"{prefix}_stats.csv", newline="") as f:
        return [{"name": row["Name"], "requests": int(row["Request Count"]),
                 "failures": int(row["Failure Count"]), "rps": _number(row["Requests/s"]),
                 "mean_ms": _number(row["Average Response Time"]),
                 **{f"p{p[:-1]}_ms": _number(row[p]) for p in PERCENTILES}}
                for row in csv.DictReader(f)]


def read_history(prefix: Path) -> dict[str, list[float]]:
    """The "Aggregated" rows of ``<prefix>_stats_history.csv`` as columns, time from 0 s."""
    with open(f"{prefix}_stats_history.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["Name"] == "Aggregated"]
    if not rows:
        return {}
    start = int(rows[0]["Timestamp"])
    history = {"t": [int(r["Timestamp"]) - start for r in rows],
               "users": [_number(r["User Count"]) for r in rows],
               "rps": [_number(r["Requests/s"]) for r in rows],
               "failures_per_s": [_number(r["Failures/s"]) for r in rows]}
    for p in PERCENTILES:  # no percentile before the first answer
        history[f"p{p[:-1]}_ms"] = [_number(r[p]) if int(r["Total Request Count"]) else math.nan
                                    for r in rows]
    return history


def plot(history: dict[str, list[float]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    top.plot(history["t"], history["rps"], label="requests/s", color="tab:blue")
    top.plot(history["t"], history["failures_per_s"], label="failures/s", color="tab:red")
    top.set_ylabel("throughput (req/s)")
    users = top.twinx()
    users.plot(history["t"], history["users"], color="gray", linestyle=":", label="users")
    users.set_ylabel("users")
    top.legend(loc="upper left")
    for key, color in (("p50_ms", "tab:green"), ("p95_ms", "tab:orange"), ("p99_ms", "tab:red")):
        bottom.plot(history["t"], history[key], label=key.replace("_ms", ""), color=color)
    bottom.set_ylabel("latency (ms, 10 s window)")
    bottom.set_xlabel("time (s)")
    bottom.legend(loc="upper left")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scrape(url: str) -> dict[str, float]:
    """The server's SERVER_SERIES from ``<url>/metrics``, each summed over its labels."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals = dict.fromkeys(SERVER_SERIES, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


def server_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the server saw during the run: mean batch size, frames in and out, compression."""
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    batches = delta["diffres_batch_size_count"]
    frames_in = delta["diffres_input_frames_total"]
    frames_out = delta["diffres_output_frames_total"]
    return {"requests": delta["diffres_requests_total"], "batches": batches,
            "mean_batch_windows": delta["diffres_batch_size_sum"] / batches if batches else 0.0,
            "input_frames": frames_in, "output_frames": frames_out,
            "compression": frames_out / frames_in if frames_in else math.nan,
            "audio_seconds": delta["diffres_audio_seconds_total"]}


def format_table(stats: list[dict]) -> str:
    header = f"{'request':<24}{'reqs':>7}{'fails':>7}{'req/s':>8}{'mean':>8}" \
             f"{'p50':>8}{'p95':>8}{'p99':>8}  (ms)"
    lines = [header, "-" * len(header)]
    for row in stats:
        lines.append(f"{row['name']:<24}{row['requests']:>7}{row['failures']:>7}"
                     f"{row['rps']:>8.1f}{row['mean_ms']:>8.0f}{row['p50_ms']:>8.0f}"
                     f"{row['p95_ms']:>8.0f}{row['p99_ms']:>8.0f}")
    return "\n".join(lines)

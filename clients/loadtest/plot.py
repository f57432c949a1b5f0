"""PNG of a report: latency over time per method (p50 solid, p99 dashed) and throughput over time."""

from __future__ import annotations

from pathlib import Path


def plot_report(rep: dict, path: str | Path, *, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = rep["timeseries"]
    t = [x + ts["interval_s"] / 2 for x in ts["t"]]
    methods = list(rep["methods"])
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    fig, (ax_lat, ax_thr) = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True, constrained_layout=True)

    for m in methods:
        lat = ts["latency_ms"][m]
        for q, style in (("p50", "-"), ("p99", "--")):
            pts = [(x, y) for x, y in zip(t, lat[q]) if y is not None and y > 0]
            if pts:
                ax_lat.plot(*zip(*pts), style, color=colors[m], lw=1.3, label=f"{m} {q}")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency (ms, log)")
    ax_lat.grid(True, which="both", alpha=0.3)
    ax_lat.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax_lat.set_title("latency by send time" + (" (from the scheduled send: open loop)"
                                               if rep["config"].get("mode") == "open" else ""), fontsize=10)

    thr = ts["throughput_rps"]
    ax_thr.plot(t, thr["overall"], color="black", lw=1.6, label="overall")
    for m in methods:
        ax_thr.plot(t, thr[m], color=colors[m], lw=1.2, label=m)
        errs = ts["errors_per_s"].get(m)
        if errs and any(errs):
            ax_thr.plot(t, errs, ":", color=colors[m], lw=1.2, label=f"{m} errors")
    ax_thr.set_ylabel("completed requests / s")
    ax_thr.set_xlabel("time (s)")
    ax_thr.set_ylim(bottom=0)
    ax_thr.grid(True, alpha=0.3)
    ax_thr.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax_thr.set_title("throughput (by completion time)", fontsize=10)

    o = rep["overall"]
    cfg = rep["config"]
    load = f"rate {cfg.get('rate'):g}/s" if cfg.get("mode") == "open" else f"concurrency {cfg.get('concurrency')}"
    lat = o["latency_ms"]
    ms = lambda v: "-" if v is None else f"{v:,.1f}"
    fig.suptitle(title or (f"{rep['tool']} -> {rep['target']} ({rep['snapshot'].get('snapshot')}), {load}, "
                           f"{rep['duration_s']:g} s: {o['throughput_rps']:,.1f} req/s, p50 {ms(lat['p50'])} ms, "
                           f"p99 {ms(lat['p99'])} ms, errors {o['errors']:,}"), fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

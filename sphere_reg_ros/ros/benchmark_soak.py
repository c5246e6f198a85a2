"""Soak mode of the node benchmark (``--soak-minutes M --rate-hz R``, see
:mod:`.benchmark_latency`): frames published at a fixed rate whether or not the node keeps up,
one row of counters, latency percentiles and memory per window, a summary and a plot.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np
import torch

from . import conversions as conv
from .benchmark_node import _ready_line, _rss_mb, _running_node, _scene

_SOAK_WARMUP_S = 60.0  # memory growth is measured from the first window ending after this
_SOAK_STEP_S = 1.0  # the soak trajectory advances one tracking step per this many seconds
_SOAK_COUNTERS = (
    "frames_received",
    "frames_processed",
    "frames_dropped",
    "frames_rejected",
    "registrations_failed",
)


# ----------------------------------------------------------------------------- soak mode
def _soak_frames(opts, device: str):
    """Geometry, and the tracking mode's trajectory rendered ahead of time (as in :func:`_frames`)."""
    geometry, _, trajectory, render = _scene(opts, device)
    return geometry, render(trajectory(20))


def _counters(diag: dict, base: dict) -> dict:
    """The node's counters from a /diagnostics status, minus those of ``base`` (after the warm-up)."""
    return {k: int(diag.get(k, 0)) - int(base.get(k, 0)) for k in _SOAK_COUNTERS}


def _percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_s": None, "p95_s": None, "max_s": None}
    return {
        "p50_s": float(np.percentile(latencies, 50)),
        "p95_s": float(np.percentile(latencies, 95)),
        "max_s": float(np.max(latencies)),
    }


class _Soak:
    """One soak run against a started node: the publishing schedule, the frames sent and their
    TFs, and one row per window (see :func:`_soak_device`)."""

    def __init__(self, opts, node, player, base: dict, msgs: list, info) -> None:
        self.node, self.player, self.inbox, self.base = node, player, player.inbox, base
        self.msgs, self.info = msgs, info
        self.order = list(range(len(msgs))) + list(range(len(msgs) - 2, 0, -1))
        self.per_step = max(1, round(opts.rate_hz * _SOAK_STEP_S))
        self.period, self.duration = 1.0 / opts.rate_hz, 60.0 * opts.soak_minutes
        self.window = opts.soak_window_s
        self.sent: dict[tuple[int, int], float] = {}
        self.rows: list[dict] = []
        self.everything: list[float] = []
        self.state = {"n": 0, "w_sent": 0, "tf": 0, "late": 0}
        self.prev = {k: 0 for k in _SOAK_COUNTERS}
        with self.inbox.cv:
            self.inbox.tf.clear()
            self.inbox.diag.clear()
        self.start = time.monotonic()
        self.w_start = self.next_t = self.start

    def close_window(self, now: float) -> None:
        """Record (and print) the row of the window ending at ``now`` (monotonic s)."""
        inbox, state = self.inbox, self.state
        with inbox.cv:
            arrived, inbox.tf = inbox.tf, {}
            diag = dict(inbox.last_diag)
            inbox.diag.clear()  # frame() is not used here: keep this process's memory flat
        lats = [
            arrival - self.sent.pop(key)
            for key, (arrival, _) in arrived.items()
            if key in self.sent
        ]
        self.everything.extend(lats)
        state["tf"] += len(lats)
        total = _counters(diag, self.base)
        span = max(now - self.w_start, 1e-9)
        row = {
            "window": len(self.rows) + 1,
            "t_s": now - self.start,
            "duration_s": span,
            "sent": state["w_sent"],
            "sent_total": state["n"],
            "rate_hz": state["w_sent"] / span,
            "tf": len(lats),
            "tf_total": state["tf"],
            "node": {k: total[k] - self.prev[k] for k in _SOAK_COUNTERS},
            "node_total": total,
            **_percentiles(lats),
            "rss_mb": _rss_mb(self.node.proc.pid),
        }
        self.rows.append(row)
        print(_soak_row(row), flush=True)
        self.prev, self.w_start, state["w_sent"] = total, now, 0

    def publish(self) -> float:
        """Publish on schedule until the soak's duration has passed, closing windows on the way;
        returns the end (monotonic s). A schedule more than a second behind is reset (no burst)."""
        state, start, window = self.state, self.start, self.window
        while True:
            now = time.monotonic()
            if now - start >= self.duration:
                return time.monotonic()
            if now - self.w_start >= window:
                self.close_window(now)
                if self.node.proc.poll() is not None:
                    raise RuntimeError(
                        "the node exited during the soak:\n" + "".join(self.node.lines[-30:])
                    )
                continue
            if now < self.next_t:
                left = min(
                    self.next_t - now, self.w_start + window - now, start + self.duration - now
                )
                time.sleep(left)
                continue
            msg = self.msgs[self.order[(state["n"] // self.per_step) % len(self.order)]]
            key, t_pub = self.player.send(msg, self.info)
            self.sent[key] = t_pub
            state["n"] += 1
            state["w_sent"] += 1
            self.next_t += self.period
            if now - self.next_t > 1.0:
                state["late"] += 1
                self.next_t = now

    def drain(self, end: float, timeout: float) -> bool:
        """Wait until the node is idle (every received frame processed, dropped or rejected),
        then close the last window; whether it became idle."""
        n = self.state["n"]

        def idle() -> bool:
            c = _counters(self.inbox.last_diag, self.base)
            done = c["frames_processed"] + c["frames_dropped"] + c["frames_rejected"]
            return done == c["frames_received"] and (
                c["frames_received"] >= n or time.monotonic() - end > 5.0
            )

        drained = self.player.wait(idle, max(30.0, min(timeout, 120.0)))
        time.sleep(0.5)  # a TF published just before the last diagnostics
        self.close_window(time.monotonic())
        return drained

    def memory(self, rss_start: float, rss_warm: float) -> dict:
        """Resident memory (MB) at start, after the warm-up frame and over the windows: growth
        from the first window ending after the warm-up time, on single readings and on the
        medians of the first and the last minute (one reading a window is noisy)."""
        rows = self.rows
        warm_row = next((r for r in rows if r["t_s"] >= _SOAK_WARMUP_S), rows[0])
        growth = 100.0 * (rows[-1]["rss_mb"] - warm_row["rss_mb"]) / warm_row["rss_mb"]
        after = [r["rss_mb"] for r in rows[warm_row["window"] - 1 :]]
        k = max(1, round(60.0 / self.window))
        first, last = float(np.median(after[:k])), float(np.median(after[-k:]))
        return {
            "start": rss_start,
            "after_warmup_frame": rss_warm,
            "reference": warm_row["rss_mb"],
            "reference_t_s": warm_row["t_s"],
            "reference_after_warmup": warm_row["t_s"] >= _SOAK_WARMUP_S,
            "end": rows[-1]["rss_mb"],
            "growth_pct": growth,
            "after_reference_min": float(np.min(after)),
            "after_reference_max": float(np.max(after)),
            "median_first_minute": first,
            "median_last_minute": last,
            "median_growth_pct": 100.0 * (last - first) / first,
        }


def _soak_device(opts, device: str) -> dict:
    """Publish at ``opts.rate_hz`` for ``opts.soak_minutes``; one row per ``opts.soak_window_s``."""
    import rclpy  # noqa: F401  (fail early without ROS)
    from std_msgs.msg import Header

    if opts.rate_hz <= 0 or opts.soak_window_s <= 0:
        raise ValueError("--rate-hz and --soak-window-s must be > 0")
    geometry, images = _soak_frames(opts, device if device != "auto" else "cpu")
    info = conv.geometry_to_camera_info(geometry)
    with _running_node(opts, device, tracking=True) as (node, player, startup_s):
        rss_start = _rss_mb(node.proc.pid)
        warm, base, _ = player.frame(images[0], info, opts.timeout)
        rss_warm = _rss_mb(node.proc.pid)
        if not base:
            player.wait(lambda: bool(player.inbox.last_diag), 5.0)
            base = dict(player.inbox.last_diag)
        msgs = [conv.numpy_to_image(image, "32FC1", Header(frame_id="carm")) for image in images]
        soak = _Soak(opts, node, player, base, msgs, info)
        print(
            f"[{device}] soak: {opts.rate_hz:g} Hz for {opts.soak_minutes:g} min, a row every "
            f"{soak.window:g} s",
            flush=True,
        )
        print(_SOAK_HEADER, flush=True)
        end = soak.publish()
        drained = soak.drain(end, opts.timeout)
        start, n, rows = soak.start, soak.state["n"], soak.rows
        return {
            "device": device,
            "mode": "soak",
            "registrar": _ready_line(node),
            "startup_s": startup_s,
            "warmup_s": warm,
            "rate_hz": opts.rate_hz,
            "soak_minutes": opts.soak_minutes,
            "window_s": soak.window,
            "duration_s": end - start,
            "drain_s": rows[-1]["t_s"] - (end - start),
            "drained": drained,
            "sent": n,
            "sent_rate_hz": n / max(end - start, 1e-9),
            "schedule_resets": soak.state["late"],
            "tf_received": soak.state["tf"],
            "node": rows[-1]["node_total"],
            "latency": _percentiles(soak.everything),
            "latency_mean_s": float(np.mean(soak.everything)) if soak.everything else None,
            "rss_mb": soak.memory(rss_start, rss_warm),
            "windows": rows,
        }


_SOAK_HEADER = (
    f"{'win':>4} {'t s':>7} {'sent':>5} {'Hz':>5} {'TF':>4} {'recv':>5} {'proc':>5} {'drop':>5} "
    f"{'fail':>4} {'p50 s':>6} {'p95 s':>6} {'max s':>6} {'RSS MB':>7}"
)


def _soak_row(r: dict) -> str:
    c = r["node"]
    lat = " ".join(
        f"{'-':>6}" if r[k] is None else f"{r[k]:6.3f}" for k in ("p50_s", "p95_s", "max_s")
    )
    return (
        f"{r['window']:4d} {r['t_s']:7.1f} {r['sent']:5d} {r['rate_hz']:5.1f} {r['tf']:4d} "
        f"{c['frames_received']:5d} {c['frames_processed']:5d} {c['frames_dropped']:5d} "
        f"{c['registrations_failed']:4d} {lat} {r['rss_mb']:7.1f}"
    )


def _soak_report(results: list[dict], opts) -> None:
    print(
        f"\nregistration node soak ({platform.node()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}); image {opts.image_size}px, registration "
        f"{opts.resolution}px, CT {opts.ct or 'embedded example'} at {opts.spacing} mm"
    )
    for r in results:
        print(f"\n[{r['device']}] {r['registrar']}")
        print(
            f"  {r['rate_hz']:g} Hz for {r['soak_minutes']:g} min: one row per {r['window_s']:g} s "
            "(node counters and TFs per window; latency of the frames whose TF arrived in it)"
        )
        print("  " + _SOAK_HEADER)
        for row in r["windows"]:
            print("  " + _soak_row(row))
        c, lat, mem = r["node"], r["latency"], r["rss_mb"]
        print(
            f"  sent {r['sent']} frames in {r['duration_s']:.1f} s ({r['sent_rate_hz']:.2f} Hz), "
            f"TF received for {r['tf_received']}"
        )
        print(
            f"  node: received {c['frames_received']}, processed {c['frames_processed']}, dropped "
            f"{c['frames_dropped']}, rejected {c['frames_rejected']}, registrations failed "
            f"{c['registrations_failed']}"
            + ("" if r["drained"] else " (the node was still busy at the end)")
        )
        print(
            f"  processed + dropped + rejected = {c['frames_processed'] + c['frames_dropped'] + c['frames_rejected']}"
            f" (received {c['frames_received']}); received {c['frames_received']} of {r['sent']} sent"
            + (
                " (the rest were replaced in the node's keep-last image queue before it took them)"
                if c["frames_received"] < r["sent"]
                else ""
            )
        )
        if lat["p50_s"] is not None:
            print(
                f"  latency image -> TF: p50 {lat['p50_s']:.3f} s  p95 {lat['p95_s']:.3f} s  max "
                f"{lat['max_s']:.3f} s  mean {r['latency_mean_s']:.3f} s  ({r['tf_received']} frames)"
            )
        else:
            print("  latency image -> TF: no frame registered")
        which = (
            f"first window after {_SOAK_WARMUP_S:.0f} s"
            if mem["reference_after_warmup"]
            else f"first window: the soak is shorter than {_SOAK_WARMUP_S:.0f} s"
        )
        print(
            f"  resident memory: {mem['start']:.0f} MB at start, {mem['after_warmup_frame']:.0f} MB after the "
            f"warm-up frame, {mem['reference']:.1f} MB at {mem['reference_t_s']:.0f} s ({which}), "
            f"{mem['end']:.1f} MB at the end: {mem['growth_pct']:+.2f} % (single readings)"
        )
        # one reading a window jitters by several % (the allocator's caches): growth is judged on the
        # medians of the first and the last minute after warm-up
        print(
            f"  growth: median of the first minute after warm-up {mem['median_first_minute']:.0f} MB, of the last "
            f"minute {mem['median_last_minute']:.0f} MB: {mem['median_growth_pct']:+.2f} % "
            f"({'<= 5 %' if mem['median_growth_pct'] <= 5.0 else 'more than 5 %'}; single readings from then on "
            f"{mem['after_reference_min']:.0f}-{mem['after_reference_max']:.0f} MB)"
        )
        if r.get("plot"):
            print(f"  plot: {r['plot']}")


def _soak_plot(r: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = r["windows"]
    t = np.array([row["t_s"] for row in rows]) / 60.0
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for key, label, style in (
        ("p50_s", "p50", "o-"),
        ("p95_s", "p95", "s-"),
        ("max_s", "max", "^:"),
    ):
        ax1.plot(
            t, [np.nan if row[key] is None else row[key] for row in rows], style, ms=3, label=label
        )
    ax1.set_ylabel("latency image → TF (s)")
    ax1.set_ylim(bottom=0)
    ax1.legend(loc="upper right", fontsize=8)
    ax1.grid(alpha=0.3)
    c, mem = r["node"], r["rss_mb"]
    ax1.set_title(
        f"node soak [{r['device']}]: {r['rate_hz']:g} Hz for {r['soak_minutes']:g} min; received "
        f"{c['frames_received']}, processed {c['frames_processed']}, dropped {c['frames_dropped']}",
        fontsize=9,
    )
    ax2.plot(t, [row["rss_mb"] for row in rows], "o-", ms=3, color="tab:purple")
    ax2.axvline(mem["reference_t_s"] / 60.0, color="gray", ls="--", lw=0.8)
    ax2.set_ylabel("node resident memory (MB)")
    ax2.set_xlabel("time since the soak started (min)")
    ax2.grid(alpha=0.3)
    ax2.set_title(
        f"growth after warm-up (medians of the first and last minute): {mem['median_first_minute']:.0f} -> "
        f"{mem['median_last_minute']:.0f} MB ({mem['median_growth_pct']:+.2f} %); single readings "
        f"{mem['reference']:.0f} -> {mem['end']:.0f} MB ({mem['growth_pct']:+.2f} %)",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _soak_paths(opts, device: str) -> tuple[str, str | None]:
    """Where the PNG goes, and the JSON when ``--json`` does not name one."""
    if opts.out:
        os.makedirs(opts.out, exist_ok=True)
        return os.path.join(opts.out, f"soak_{device}.png"), None if opts.json else os.path.join(
            opts.out, "soak.json"
        )
    if opts.json:
        stem = os.path.splitext(opts.json)[0]
        return f"{stem}_{device}.png", None
    return f"soak_{device}.png", None

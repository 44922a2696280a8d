"""Guest progress from PASS timestamps, computed the same way for every mode.

Progress is the pass count as a continuous quantity: between two PASS
lines it grows linearly. The source's lines come before the switch, the
destination's after (the destination carries on from the source's pass
count, so the two series join).

t0, the switch, is the source's STOP event: the instant the guest stopped
running on the source (precopy: the final stop-and-copy; postcopy: the
switch to postcopy; swapcopy: the device-state migration).
"""
import bisect


def joined_passes(src_passes, dst_passes):
    """[(t, n)] of the source's PASS lines followed by the destination's
    later ones."""
    out = list(src_passes)
    last = out[-1][1] if out else -1
    out += [(t, n) for t, n in dst_passes if n > last]
    return out


def progress_at(series, t):
    """Pass count at time t by linear interpolation; None outside the series."""
    if not series or t < series[0][0] or t > series[-1][0]:
        return None
    ts = [p[0] for p in series]
    i = bisect.bisect_right(ts, t)
    if i >= len(series):
        return float(series[-1][1])
    (t1, n1), (t2, n2) = series[i - 1], series[i]
    if t2 == t1:
        return float(n2)
    return n1 + (n2 - n1) * (t - t1) / (t2 - t1)


def progress_src(src_passes, t):
    """Progress at t (on the source, before the switch) judged from the
    source alone: interpolated between its PASS lines, or after the last
    one, that pass plus the fraction of a pass (at the last pass's pace)
    done since, at most one. Interpolating to the destination's first PASS
    instead would spread the stall after the switch over time before it."""
    if len(src_passes) < 2 or t < src_passes[0][0]:
        return None
    if t <= src_passes[-1][0]:
        return progress_at(src_passes, t)
    (ta, na), (tb, nb) = src_passes[-2], src_passes[-1]
    pace = (tb - ta) / max(nb - na, 1)
    return nb + min(1.0, (t - tb) / pace) if pace > 0 else float(nb)


def progress_figures(src_passes, dst_passes, t_begin, t0, window):
    """Rates in passes/s: `before` over [t_begin - W, t_begin] (before any
    migration work), `pre_switch` over [t_begin, t0] (precopy rounds,
    swapcopy's arming), `after` over [t0, t0 + W]; the first destination
    PASS after t0; and the progress curve for the plot."""
    src_passes = [(t, n) for t, n in src_passes if t <= t0]
    series = joined_passes(src_passes, dst_passes)
    out = {}
    pb0, pb1 = progress_src(src_passes, t_begin - window), progress_src(src_passes, t_begin)
    if pb0 is not None and pb1 is not None:
        out["rate_before"] = (pb1 - pb0) / window
    p0 = progress_src(src_passes, t0)
    # Only meaningful over a phase long enough to hold a few passes.
    if pb1 is not None and p0 is not None and t0 - t_begin >= 0.5:
        out["rate_pre_switch"] = (p0 - pb1) / (t0 - t_begin)
    pw = progress_at(series, t0 + window)
    if p0 is not None and pw is not None:
        out["rate_after"] = max(0.0, pw - p0) / window
    if out.get("rate_before") and "rate_after" in out:
        out["rate_ratio"] = out["rate_after"] / out["rate_before"]
    if out.get("rate_before") and "rate_pre_switch" in out:
        out["pre_switch_ratio"] = out["rate_pre_switch"] / out["rate_before"]
    first = [t for t, n in dst_passes if t > t0]
    if first:
        out["first_pass_s"] = first[0] - t0
    if p0 is not None:
        curve = [(round(t - t0, 4), round(n - p0, 3)) for t, n in series
                 if t >= t_begin - window]
        # the switch itself, from the source's side
        out["curve"] = sorted(curve + [(0.0, 0.0)])
        out["curve_begin"] = round(t_begin - t0, 4)
    return out

"""A drift report as one self-contained HTML file: summary, tables, and a chart per feature.

Nothing is fetched when the file opens: no scripts, fonts, stylesheets or
images from anywhere; the charts are inline SVG drawn here (reference and
current shares side by side on the profile's own bins, or its categories and
"other"). Every string that comes from users or data (model, file and feature
names, categories, reasons) goes through ``html.escape``. Pure: data in, text
out; the caller writes the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

import numpy as np

from shipyard.monitoring.drift.detector import DriftReport, FeatureDrift
from shipyard.monitoring.drift.profile import CategoricalProfile, NumericProfile, Profile
from shipyard.monitoring.drift.window import Window

__all__ = ["render_html"]

_W, _H = 560, 170          # chart size
_PAD_L, _PAD_B, _PAD_T = 40, 34, 10
_REF, _CUR, _BAD = "#8a94a6", "#1c7ed6", "#d9480f"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1100px;
color:#1f2933;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}h3{font-size:15px;margin:18px 0 4px}
.meta{color:#52606d}.headline{font-size:16px;padding:10px 14px;border-radius:6px;margin:14px 0}
.drift{background:#fff4e6;border:1px solid #ffa94d}.ok{background:#ebfbee;border:1px solid #8ce99a}
table{border-collapse:collapse;margin:6px 0 12px}th,td{padding:3px 9px;border-bottom:1px solid #e4e7eb;
text-align:right;white-space:nowrap}th{background:#f5f7fa}td:first-child,th:first-child{text-align:left}
tr.d td{color:#c92a2a;font-weight:600}.feature{border-top:1px solid #e4e7eb;padding-top:4px}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}.small{font-size:12px;color:#52606d}
svg text{font:10px system-ui,sans-serif;fill:#52606d}
"""


def render_html(
    report: DriftReport,
    profile: Profile,
    window: Window | None = None,
    *,
    title: str = "Drift report",
    meta: Mapping[str, Any] | None = None,
    windows: Sequence[tuple[str, DriftReport]] = (),
) -> str:
    """The report as one HTML document.

    Args:
        report: the comparison to show.
        profile: the reference it was compared with (bins, categories, reference counts).
        window: the current rows' window (current counts per bin); without it, no charts.
        title: the page's heading (escaped).
        meta: lines of the summary, label -> value (both escaped).
        windows: per-window reports to list, each with a label (e.g. ``rows 0-9,999``).
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        _summary(report, meta or {}),
    ]
    if windows:
        parts.append(_windows_table(windows))
    parts.append("<h2>Input features</h2>")
    parts.append(_feature_table(report.features, "f"))
    if report.outputs:
        parts.append("<h2>Predictions</h2>")
        parts.append(_feature_table(report.outputs, "o"))
    if report.multivariate:
        parts.append("<h2>Multivariate</h2>")
        parts.append(_feature_table(report.multivariate, None))
    if window is not None:
        parts.append("<h2>Distributions</h2>")
        parts.append(f'<p class="legend small"><span style="background:{_REF}"></span>reference'
                     f'<span style="background:{_CUR}"></span>current'
                     f'<span style="background:{_BAD}"></span>current (drifted)</p>')
        for prefix, group in (("f", report.features), ("o", report.outputs)):
            for i, f in enumerate(group):
                parts.append(_feature_section(f, f"{prefix}{i}", profile, window))
    parts.append("</body></html>")
    return "\n".join(parts)


# -- summary and tables ---------------------------------------------------------------------------


def _summary(report: DriftReport, meta: Mapping[str, Any]) -> str:
    drifted = [f.feature for f in report.features if f.drifted]
    compared = [f for f in report.features if f.skipped is None]
    if report.drifted:
        head = (f"Dataset drift: {len(drifted)} of {len(report.features)} input features drifted "
                f"(share {report.share:.0%}).")
    else:
        head = (f"No dataset drift: {len(drifted)} of {len(report.features)} input features drifted "
                f"(share {report.share:.0%}).")
    if not compared and report.features:
        head += " Nothing was compared: too few rows."
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>" for k, v in meta.items())
    rows += f"<tr><th>rows compared</th><td>{report.rows:,}</td></tr>"
    if drifted:
        rows += f"<tr><th>drifted</th><td>{escape(', '.join(drifted))}</td></tr>"
    cls = "drift" if report.drifted else "ok"
    return f'<div class="headline {cls}">{escape(head)}</div><table class="meta">{rows}</table>'


def _windows_table(windows: Sequence[tuple[str, DriftReport]]) -> str:
    head = "<tr><th>window</th><th>rows compared</th><th>share drifted</th><th>dataset drift</th>" \
           "<th>drifted features</th></tr>"
    body = []
    for label, r in windows:
        names = ", ".join(f.feature for f in (*r.features, *r.outputs, *r.multivariate) if f.drifted)
        body.append(f'<tr{" class=d" if r.drifted else ""}><td>{escape(label)}</td><td>{r.rows:,}</td>'
                    f"<td>{r.share:.0%}</td><td>{'yes' if r.drifted else 'no'}</td>"
                    f'<td style="text-align:left">{escape(names)}</td></tr>')
    return f"<h2>Windows</h2><table>{head}{''.join(body)}</table>"


def _feature_table(features: Sequence[FeatureDrift], anchor: str | None) -> str:
    head = ("<tr><th>feature</th><th>test</th><th>statistic</th><th>p-value</th><th>effect</th>"
            "<th>threshold</th><th>drifted</th><th>n</th><th>nulls</th><th>out of range</th><th>unseen</th>"
            "<th>type failures</th><th>note</th></tr>")
    body = []
    for i, f in enumerate(features):
        q = f.quality
        name = escape(f.feature)
        if anchor is not None:
            name = f'<a href="#{anchor}{i}">{name}</a>'
        body.append(
            f'<tr{" class=d" if f.drifted else ""}><td>{name}</td><td>{escape(f.test)}</td>'
            f"<td>{_num(f.statistic)}</td><td>{_num(f.p_value)}</td><td>{_num(f.effect)}</td>"
            f"<td>{_num(f.threshold)}</td><td>{'yes' if f.drifted else 'no'}</td><td>{f.n:,}</td>"
            + (_quality_cells(q) if anchor is not None else "<td></td>" * 4) +
            f'<td style="text-align:left">{escape(f.skipped or "")}</td></tr>'
        )
    return f"<table>{head}{''.join(body)}</table>"


def _quality_cells(q: Mapping[str, int]) -> str:
    return (f"<td>{q.get('nulls', 0):,}</td><td>{q.get('below_min', 0) + q.get('above_max', 0):,}</td>"
            f"<td>{q.get('unseen', 0):,}</td><td>{q.get('type_failures', 0):,}</td>")


def _num(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}"


# -- charts ---------------------------------------------------------------------------------------


def _feature_section(f: FeatureDrift, anchor: str, profile: Profile, window: Window) -> str:
    try:
        fp = profile.feature(f.feature)
        current = np.asarray(window.counts(f.feature), dtype=float)
    except (KeyError, ValueError):
        return ""
    reference = np.asarray(fp.counts, dtype=float)
    if isinstance(fp, NumericProfile):
        labels = _bin_labels(fp)
        ticks = (_fmt(fp.min), _fmt(fp.max))
    elif isinstance(fp, CategoricalProfile):
        labels = [*fp.categories, "other"]
        ticks = None
    else:  # pragma: no cover - a kind this module does not know
        return ""
    verdict = "drifted" if f.drifted else ("not compared: " + f.skipped if f.skipped else "no drift")
    q = f.quality
    quality = (f"nulls {q.get('nulls', 0):,} · below min {q.get('below_min', 0):,} · "
               f"above max {q.get('above_max', 0):,} · unseen {q.get('unseen', 0):,} · "
               f"type failures {q.get('type_failures', 0):,}")
    caption = f"{f.test} statistic {_num(f.statistic)}, p {_num(f.p_value)}, effect {_num(f.effect)} ({verdict})"
    svg = _bars(labels, reference, current, f.drifted, ticks)
    return (f'<div class="feature" id="{anchor}"><h3>{escape(f.feature)} '
            f'<span class="small">({escape(fp.kind)})</span></h3>'
            f'<div class="small">{escape(caption)}</div>{svg}<div class="small">{escape(quality)}</div></div>')


def _bin_labels(fp: NumericProfile) -> list[str]:
    edges = list(fp.edges)
    lows = [fp.min, *edges]
    highs = [*edges, fp.max]
    return [f"({_fmt(lo)}, {_fmt(hi)}]" for lo, hi in zip(lows, highs, strict=True)]


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def _bars(labels: Sequence[str], reference: np.ndarray[Any, Any], current: np.ndarray[Any, Any], drifted: bool,
          ticks: tuple[str, str] | None) -> str:
    """Reference and current shares per bin, side by side, as an SVG element."""
    k = min(len(labels), len(reference), len(current))
    ref = reference[:k] / max(reference[:k].sum(), 1.0)
    cur = current[:k] / max(current[:k].sum(), 1.0)
    top = float(max(ref.max(initial=0.0), cur.max(initial=0.0))) or 1.0
    plot_w, plot_h = _W - _PAD_L - 8, _H - _PAD_B - _PAD_T
    slot = plot_w / max(k, 1)
    bar = max(slot * 0.42, 0.5)
    base = _PAD_T + plot_h
    colour = _BAD if drifted else _CUR
    out = [f'<svg width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
           f'role="img">']
    out.append(f'<line x1="{_PAD_L}" y1="{base}" x2="{_W - 8}" y2="{base}" stroke="#cbd2d9"/>')
    out.append(f'<text x="{_PAD_L - 4}" y="{_PAD_T + 8}" text-anchor="end">{top:.0%}</text>')
    out.append(f'<text x="{_PAD_L - 4}" y="{base}" text-anchor="end">0</text>')
    for i in range(k):
        x = _PAD_L + i * slot
        tip = escape(f"{labels[i]}: reference {ref[i]:.1%}, current {cur[i]:.1%}")
        for j, (share, fill) in enumerate(((ref[i], _REF), (cur[i], colour))):
            h = plot_h * float(share) / top
            out.append(f'<rect x="{x + slot * 0.08 + j * bar:.2f}" y="{base - h:.2f}" width="{bar:.2f}" '
                       f'height="{h:.2f}" fill="{fill}"><title>{tip}</title></rect>')
        if ticks is None and k <= 20:  # category names under their bars; a long list relies on the tooltips
            name = labels[i] if len(labels[i]) <= 12 else labels[i][:11] + "…"
            out.append(f'<text x="{x + slot / 2:.2f}" y="{base + 12}" text-anchor="middle">{escape(name)}</text>')
    if ticks is not None:
        out.append(f'<text x="{_PAD_L}" y="{base + 12}">{escape(ticks[0])}</text>')
        out.append(f'<text x="{_W - 8}" y="{base + 12}" text-anchor="end">{escape(ticks[1])}</text>')
        out.append(f'<text x="{_PAD_L + plot_w / 2:.0f}" y="{base + 26}" text-anchor="middle">'
                   f"reference quantile bins (min to max)</text>")
    out.append("</svg>")
    return "".join(out)

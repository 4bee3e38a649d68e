"""The one-page PDF statement of a subscriber's cycle (reportlab): totals by rate card, direction, class and band,
the amount per currency, and the usage per day as a bar chart.

Amounts are exact decimals of the stored micro-units (rounded once per record by rating; the statement sums them).
Page content is written uncompressed and without timestamps of its own (``invariant``), so the same cycle gives the
same file and the text can be checked.
"""

from __future__ import annotations

import io
from decimal import Decimal

from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.shapes import Drawing
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

MAX_LINES = 24
"""Summary lines on the page; more are folded into one "other" line so the statement stays one page."""


StatementLine = tuple[str, str, str, str, str, int, int, int, int, int]
"""(rate card, direction, class, band, currency, records, bytes, billable, allowance, amount micros)."""


def _money(micros: int, currency: str) -> str:
    return f"{Decimal(micros).scaleb(-6).quantize(Decimal('0.000001'))} {currency}"


def _gb(n: int) -> str:
    return f"{Decimal(n).scaleb(-9).quantize(Decimal('0.001'))}"


def statement(*, subscriber: str, cycle: str, period: str, plan: str, lines: list[StatementLine],
              totals: dict[str, tuple[int, int]], daily: dict[str, dict[str, int]], notes: list[str],
              generated: str) -> bytes:
    """The PDF bytes. ``lines``: (rate card, direction, class, band, currency, records, bytes, billable, allowance,
    amount micros); ``totals``: currency -> (amount micros, bytes); ``daily``: local day -> direction -> bytes."""
    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=A4, leftMargin=16 * mm, rightMargin=16 * mm, topMargin=14 * mm,
                            bottomMargin=14 * mm, title=f"Usage statement {subscriber} {cycle}", author="flowmed",
                            pageCompression=0, invariant=1)
    styles = getSampleStyleSheet()
    small = styles["BodyText"].clone("small", fontSize=8, leading=10)
    story = [Paragraph(f"Usage statement — {_esc(subscriber)}", styles["Title"]),
             Paragraph(f"Billing cycle {cycle} ({_esc(period)}); plan {_esc(plan)}", styles["BodyText"]),
             Spacer(1, 4 * mm)]
    for cur, (amount, nbytes) in totals.items():
        story.append(Paragraph(f"<b>Total: {_money(amount, cur)}</b> for {_gb(nbytes)} GB rated",
                               styles["Heading3"]))
    if not totals:
        story.append(Paragraph("No rated records in this cycle.", styles["Heading3"]))
    rows = [["rate card", "direction", "class", "band", "records", "GB", "billable GB", "in allowance GB", "amount"]]
    shown = lines[:MAX_LINES] if len(lines) <= MAX_LINES else lines[:MAX_LINES - 1]
    for card, direction, cls, band, cur, n, nb, bill, allow, amount in shown:
        rows.append([card, direction, cls, band, f"{n:,}", _gb(nb), _gb(bill), _gb(allow), _money(amount, cur)])
    if len(shown) < len(lines):
        rest = lines[len(shown):]
        rows.append(["other lines", "", "", "", f"{sum(r[5] for r in rest):,}", _gb(sum(r[6] for r in rest)),
                     _gb(sum(r[7] for r in rest)), _gb(sum(r[8] for r in rest)),
                     "; ".join(_money(sum(r[9] for r in rest if r[4] == c), c) for c in sorted({r[4] for r in rest}))])
    table = Table(rows, repeatRows=1, hAlign="LEFT")
    table.setStyle(TableStyle([
        ("FONT", (0, 0), (-1, -1), "Helvetica", 7.5),
        ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 7.5),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8edf3")),
        ("ALIGN", (4, 0), (-1, -1), "RIGHT"),
        ("LINEBELOW", (0, 0), (-1, 0), 0.5, colors.HexColor("#8a96a3")),
        ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#f6f8fa")]),
    ]))
    story += [Spacer(1, 3 * mm), table, Spacer(1, 5 * mm), Paragraph("Usage per day (GB, local time)",
                                                                      styles["Heading4"]), _daily_chart(daily)]
    for note in notes:
        story.append(Paragraph(f"Note: {_esc(note)}", small))
    story += [Spacer(1, 3 * mm), Paragraph(
        "Amounts are rounded once per rated record to micro-units of the currency and summed here. Each record and how "
        f"its amount was reached: <font face='Courier'>flowmed explain --subscriber {_esc(subscriber)} --cycle "
        f"{cycle}</font> or the subscriber page of flowmed console. Generated {generated}.", small)]
    doc.build(story)
    return buf.getvalue()


def _daily_chart(daily: dict[str, dict[str, int]]) -> Drawing:
    days = sorted(daily)
    d = Drawing(178 * mm, 58 * mm)
    if not days:
        return d
    chart = VerticalBarChart()
    chart.x, chart.y, chart.width, chart.height = 12 * mm, 10 * mm, 150 * mm, 42 * mm
    directions = sorted({k for v in daily.values() for k in v})
    # GB as rounded decimals for the drawing only (the amounts above are exact)
    chart.data = [[float(Decimal(daily[day].get(dr, 0)).scaleb(-9)) for day in days] for dr in directions]
    chart.categoryAxis.categoryNames = days
    chart.categoryAxis.labels.fontSize = 5.5 if len(days) > 16 else 7
    chart.categoryAxis.labels.angle = 90 if len(days) > 16 else 0
    chart.categoryAxis.labels.dy = -8 if len(days) > 16 else -2
    chart.valueAxis.labels.fontSize = 7
    chart.valueAxis.valueMin = 0
    chart.categoryAxis.style = "stacked"
    palette = [colors.HexColor("#2f6fb3"), colors.HexColor("#e07b39"), colors.HexColor("#3a9d5d")]
    for i in range(len(directions)):
        chart.bars[i].fillColor = palette[i % len(palette)]
        chart.bars[i].strokeColor = None
    d.add(chart)
    legend = Legend()
    legend.x, legend.y = 165 * mm, 50 * mm
    legend.fontSize = 7
    legend.colorNamePairs = [(palette[i % len(palette)], dr) for i, dr in enumerate(directions)]
    d.add(legend)
    return d


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

"""Report charts as PNG images, drawn with matplotlib (imported when the first chart is drawn:
it is a slow import)."""

from __future__ import annotations

import io

from batch_pipelines.operations.report.models import Chart


def _plt():  # noqa: ANN202 - matplotlib modules, imported lazily (slow import)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


def render_chart(chart: Chart) -> bytes:
    """A PNG of the chart (matplotlib's object API on the Agg canvas: no global state, so
    charts can be drawn from several threads)."""
    Figure, FigureCanvasAgg = _plt()
    fig = Figure(figsize=(6.4, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if chart.kind == "hist" and chart.labels:
        edges = list(chart.labels)
        width = (edges[1] - edges[0]) if len(edges) > 1 else 1.0
        ax.bar(edges, chart.values, width=width, align="edge", color="#4C72B0", edgecolor="white")
    elif chart.kind == "timeline":
        ax.plot(chart.labels, chart.values, marker="o", color="#4C72B0")
        fig.autofmt_xdate()
    else:
        labels = [str(x) for x in chart.labels]
        ax.bar(range(len(labels)), chart.values, color="#4C72B0")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(
            labels,
            rotation=30 if len(labels) > 4 else 0,
            ha="right" if len(labels) > 4 else "center",
            fontsize=8,
        )
    ax.set_title(chart.title, fontsize=10)
    ax.set_xlabel(chart.xlabel, fontsize=8)
    ax.set_ylabel(chart.ylabel, fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()

"""segsrv.report.render: the page embeds the gathered data verbatim, shows the same numbers in its tables,
draws one SVG per plot, escapes what the data says, and fetches nothing."""

from __future__ import annotations

import copy
import re
from html.parser import HTMLParser

import pytest

from support import embedded_data
from segsrv.report.gather import ReportOptions, gather_report
from segsrv.report.render import render_report, write_report
from segsrv.service import local_service


class _Page(HTMLParser):
    """Collects the data-value of every cell in the segments table, each plot's child tags, and every
    element's src / href."""

    def __init__(self):
        super().__init__()
        self.segment_cells: dict[tuple[int, str], str] = {}
        self.plots: dict[str, list[str]] = {}
        self.links: list[str] = []
        self._row = None
        self._plot = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-segment" in a:
            self._row = int(a["data-segment"])
        if tag == "td" and self._row is not None and "data-stat" in a:
            self.segment_cells[(self._row, a["data-stat"])] = a["data-value"]
        if tag == "figure" and "data-plot" in a:
            self._plot = a["data-plot"]
            self.plots[self._plot] = []
        elif self._plot is not None:
            self.plots[self._plot].append(tag)
        self.links += [v for k, v in attrs if k in ("src", "href", "xlink:href") and v and not v.startswith("#")]

    def handle_endtag(self, tag):
        if tag == "tr":
            self._row = None
        if tag == "figure":
            self._plot = None


@pytest.fixture(scope="module")
def catalog_report(report_root) -> dict:
    root, version_a, _ = report_root
    return gather_report(local_service(root), ReportOptions(compare=version_a), location=root / "petnord")


def test_page_holds_the_data_and_its_numbers(catalog_report, tmp_path):
    out = write_report(catalog_report, tmp_path / "report.html")
    html = out.read_text(encoding="utf-8")
    assert embedded_data(html) == catalog_report
    page = _Page()
    page.feed(html)
    for i, seg in enumerate(catalog_report["segments"]):
        assert int(page.segment_cells[(i, "size")]) == seg["size"]
        assert float(page.segment_cells[(i, "share")]) == seg["share"]
        assert page.segment_cells[(i, "lift")] == ""  # catalog segments have no lift
    # one SVG per plot: the sizes, per segment its lifts, stacked proportions and compactness, per model
    # its calibration, and the drift
    expected = {"segment-sizes", "drift", "calibration-0"}
    for i, seg in enumerate(catalog_report["segments"]):
        expected |= {f"lifts-{i}", f"compactness-{i}"} | ({f"stacked-{i}"} if seg["profile"]["stacked"] else set())
    assert set(page.plots) == expected
    assert all(tags and tags[0] == "svg" for tags in page.plots.values())
    assert page.links == [] and "url(http" not in html and "@import" not in html  # nothing to fetch
    assert not (tmp_path / "report.html.tmp").exists()


def test_what_the_data_says_is_escaped(catalog_report):
    data = copy.deepcopy(catalog_report)
    hostile = '</script><script>alert("x")</script><b>'
    data["segments"][-1]["name"] = hostile
    data["segments"][-1]["description"] = hostile
    data["title"] = hostile
    html = render_report(data)
    assert "<script>alert" not in html and "<b>" not in html
    assert len(re.findall(r"<script\b", html)) == 1  # the data block, nothing else
    assert embedded_data(html) == data
    # the catalog's own description with '&' and '<' comes through escaped, and reads back intact
    assert "cat owners &amp; &lt;multi&gt; pets" in html


def test_discovered_segments_show_their_lift(petnord_root):
    data = gather_report(local_service(petnord_root), ReportOptions(universe="customers", max_segments=3,
                                                                    max_fields=2))
    page = _Page()
    page.feed(render_report(data))
    assert [float(page.segment_cells[(i, "lift")]) for i in range(3)] == [s["lift"] for s in data["segments"]]
    assert "models" not in {p.split("-")[0] for p in page.plots} and "drift" not in page.plots

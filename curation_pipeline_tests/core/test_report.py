from curation_pipeline.core.report import ReportData, Tile, render_html, render_markdown, thumbnail_data_uri
from curation_pipeline_tests.conftest import jpeg, photo_crops


def test_user_strings_are_escaped():
    evil = '<script>alert("x")</script>.jpg'
    data = ReportData(
        title="t",
        generated_at="now",
        counts={"images": 1},
        selection={"name": evil},
        duplicate_groups=[[Tile(evil, "representative"), Tile("b", "exact 1.000")]],
        subset=[Tile(evil)],
        failed=[Tile(evil, "corrupt: <b>bad</b>")],
        groups_total=1,
    )
    page = render_html(data)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<b>bad</b>" not in page


def test_thumbnails_are_small_data_uris():
    uri = thumbnail_data_uri(jpeg(photo_crops(1)[0]), max_side=96)
    assert uri.startswith("data:image/jpeg;base64,")
    assert len(uri) < 12_000
    assert thumbnail_data_uri(b"not an image") is None


def test_markdown_lists_counts_and_path():
    data = ReportData(title="r", generated_at="now", counts={"images": 7}, selection={})
    md = render_markdown(data, "/tmp/r/index.html")
    assert "| images | 7 |" in md and "/tmp/r/index.html" in md


def test_histogram_marks_the_threshold_and_counts_every_value():
    import re

    page = render_html(
        ReportData(
            title="t", generated_at="now", counts={}, selection={}, nn_similarities=[0.1, 0.5, 0.5, 0.95, 0.99], threshold=0.8
        )
    )
    svg = page.split('id="threshold"')[1].split("<h3")[0]
    titles = re.findall(r"<title>[\d.]+-[\d.]+: (\d+)</title>", svg)
    assert len(titles) == 50 and sum(map(int, titles)) == 5
    assert "threshold 0.80" in svg and "<line" in svg


def test_the_subset_is_shown_next_to_random_and_metadata_names_are_escaped():
    cmp = {
        "fine_clusters": 30,
        "subset": {
            "size": 30,
            "fine_clusters_covered": 0.93,
            "nn_distance_mean": 0.4,
            "metadata_coverage": {"<img src=x onerror=alert(1)>": 1.0},
        },
        "random": {
            "size": 30,
            "fine_clusters_covered": 0.61,
            "nn_distance_mean": 0.2,
            "metadata_coverage": {"<img src=x onerror=alert(1)>": 0.5},
        },
    }
    page = render_html(ReportData(title="t", generated_at="now", counts={}, selection={}, comparison=cmp))
    section = page.split('id="versus-random"')[1].split("<h2")[0]
    assert "0.93" in section and "0.61" in section and "30 fine clusters" in section
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_hostile_keys_on_the_map_cannot_end_its_script_or_add_one():
    import json
    import re

    from curation_pipeline.core.report import MapPoint

    evil = "</script><script>alert(1)</script><!--"
    points = [MapPoint(0.1, 0.2, evil, cluster=3, selected=True, quality=evil), MapPoint(0.9, 0.8, "b.jpg", cluster=17)]
    page = render_html(
        ReportData(title=evil, generated_at="now", counts={evil: 1}, selection={}, map_points=points, map_pool=2)
    )
    assert page.count("<script") == 2 and page.count("</script>") == 2  # map data + map code, nothing else
    assert "<!--" not in page
    data = json.loads(re.search(r'<script type="application/json" id="map-data">(.*?)</script>', page, re.S).group(1))
    assert [d["q"] for d in data] == [evil, ""] and [d["c"] for d in data] == [3, 17]  # round-trips intact
    palette = json.loads(re.search(r"data-palette='([^']*)'", page).group(1))
    assert len(palette) == 16 and f'fill="{palette[17 % 16]}"' in page  # circles start in their cluster colour
    assert "<title>&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;!--</title>" in page


def test_the_page_is_self_contained_with_its_css_and_script_inline():
    from curation_pipeline.core.report import MapPoint

    page = render_html(
        ReportData(title="t", generated_at="now", counts={}, selection={}, map_points=[MapPoint(0.5, 0.5, "a", 0)])
    )
    assert "<link" not in page and ' src="http' not in page
    assert "#map-wrap{position:relative" in page.split("<style>")[1].split("</style>")[0]
    assert "getElementById('embedding-map')" in page and "%%" not in page


def test_leaks_and_missing_sources_are_escaped():
    evil = "<img src=x onerror=alert(1)>"
    page = render_html(
        ReportData(
            title="t",
            generated_at="now",
            counts={},
            selection={},
            leaks=[(Tile(evil), Tile("protected.jpg"))],
            missing_sources=[(f"file:///d/{evil}", f"cannot read source: {evil}")],
        )
    )
    assert "<img src=x" not in page and page.count("&lt;img src=x onerror=alert(1)&gt;") == 3
    assert "1 source file(s) could not be read" in page


def test_the_retrieval_page_escapes_settings_queries_and_results():
    from curation_pipeline.core.report import render_retrieval_html

    evil = "<script>alert(1)</script>"
    page = render_retrieval_html(f"Retrieval: {evil}", "now", {"text": [evil]}, [Tile(evil, "text prompt")], [])
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "No results (nothing above the threshold" in page and "<style>" in page


def test_every_template_file_ships_as_package_data():
    """A wheel (non-editable install) carries the report's templates: pyproject's package-data
    patterns match every file the renderer reads."""
    import fnmatch
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: dagster installs tomli
        import tomli as tomllib

    import curation_pipeline

    root = Path(curation_pipeline.__file__).parent
    pyproject = tomllib.loads((root.parent / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["curation_pipeline"]
    files = [p.relative_to(root).as_posix() for p in (root / "core" / "templates").iterdir() if p.is_file()]
    assert {"report.html", "retrieval.html", "_macros.html", "report.css", "map.js"} <= {Path(f).name for f in files}
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files), (files, patterns)

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

    from curation_pipeline.core.report import histogram_svg

    svg = histogram_svg([0.1, 0.5, 0.5, 0.95, 0.99], 0.8, bins=10)
    titles = re.findall(r"<title>[\d.]+-[\d.]+: (\d+)</title>", svg)
    assert len(titles) == 10 and sum(map(int, titles)) == 5
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

from curation_pipeline.core.report import ReportData, Tile, render_html, render_markdown, thumbnail_data_uri
from curation_pipeline_tests.conftest import jpeg, photo_crops


def test_user_strings_are_escaped():
    evil = '<script>alert("x")</script>.jpg'
    data = ReportData(
        title="t", generated_at="now", counts={"images": 1}, selection={"name": evil},
        duplicate_groups=[[Tile(evil, "representative"), Tile("b", "exact 1.000")]],
        subset=[Tile(evil)], failed=[Tile(evil, "corrupt: <b>bad</b>")], groups_total=1,
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

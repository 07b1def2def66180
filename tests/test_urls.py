"""Unit tests: source-table normalisation and chunk splitting."""

from __future__ import annotations

import csv

import pandas as pd
import pyarrow.parquet as pq
import pytest

from sailflow.data.urls import DREAMLIP_COLUMNS, TableError, normalize_table, split_table


def _dreamlip(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(DREAMLIP_COLUMNS)
        for url, raw, sv_short, sv_long in rows:
            w.writerow([url, raw, "ib", "ib long", sv_short, sv_long, "lla", "lla long"])


def test_dreamlip_multiline_captions_and_drops(tmp_path):
    src = tmp_path / "cc3m_3long_3short_1raw_captions_url.csv"
    _dreamlip(
        src,
        [
            ("http://a/1.jpg", "raw one", "short one", "long one,\nwith a comma and\n\"quotes\""),
            ("https://a/2.jpg", "", "short two", "long two"),  # empty raw caption: kept
            ("http://a/1.jpg", "again", "dup", "dup"),  # duplicate URL
            ("", "no url", "x", "x"),
            ("ftp://a/3.jpg", "ftp", "x", "x"),
            ("http://a/4.jpg", "", " ", ""),  # no caption in any source
            ("  http://a/5.jpg  ", "five", "5", "5"),  # surrounding spaces trimmed
        ],
    )
    out = tmp_path / "urls.parquet"
    rep = normalize_table(
        src, out, dataset="cc3m", url_column="Image Path",
        caption_sources=["raw_caption", "shortSV_captions", "longSV_captions"], fmt="dreamlip",
    )
    df = pd.read_parquet(out)
    assert df["sample_id"].tolist() == [0, 1, 6]
    assert df["url"].tolist() == ["http://a/1.jpg", "https://a/2.jpg", "http://a/5.jpg"]
    assert df.loc[0, "longSV_captions"] == 'long one,\nwith a comma and\n"quotes"'
    assert df["raw_caption"].isna().tolist() == [False, True, False]
    assert rep.input_rows == 7 and rep.kept_rows == 3
    assert dict(rep.dropped) == {"duplicate_url": 1, "empty_url": 1, "bad_scheme": 1, "no_caption": 1}
    assert rep.empty_captions == {"raw_caption": 1, "shortSV_captions": 0, "longSV_captions": 0}


def test_missing_column_names_file_and_column(tmp_path):
    src = tmp_path / "t.csv"
    pd.DataFrame({"url": ["http://a/1"], "caption": ["c"]}).to_csv(src, index=False)
    with pytest.raises(TableError, match=r"t\.csv: missing required column\(s\) \['text'\]; the file has columns \['url', 'caption'\]"):
        normalize_table(src, tmp_path / "o.parquet", dataset="d", url_column="url", caption_sources=["text"])
    assert not (tmp_path / "o.parquet").exists()


def test_dreamlip_header_is_checked(tmp_path):
    src = tmp_path / "d.csv"
    pd.DataFrame({"Image Path": ["http://a"], "raw_caption": ["x"]}).to_csv(src, index=False)
    with pytest.raises(TableError, match="shortIB_captions"):
        normalize_table(src, tmp_path / "o.parquet", dataset="d", url_column="Image Path", caption_sources=["raw_caption"], fmt="dreamlip")


def test_local_urls_refused_unless_allowed(tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    src = tmp_path / "t.tsv"
    pd.DataFrame({"url": ["http://a/1", img.as_uri(), "rel/y.png"], "cap": ["a", "b", "c"]}).to_csv(src, sep="\t", index=False)
    with pytest.raises(TableError, match=r"allow_local_urls: true") as e:
        normalize_table(src, tmp_path / "o.parquet", dataset="demo", url_column="url", caption_sources=["cap"])
    assert "data row 1" in str(e.value) and "datasets.demo" in str(e.value)
    assert not (tmp_path / "o.parquet").exists()

    rep = normalize_table(src, tmp_path / "o.parquet", dataset="demo", url_column="url", caption_sources={"c": "cap"}, allow_local_urls=True)
    df = pd.read_parquet(tmp_path / "o.parquet")
    assert rep.kept_rows == 3
    assert df["url"].tolist() == ["http://a/1", img.as_uri(), (tmp_path / "rel/y.png").as_uri()]
    assert list(df.columns) == ["sample_id", "url", "c"]


def test_parquet_source_with_nulls_and_many_batches(tmp_path, monkeypatch):
    import sailflow.data.urls as urls

    monkeypatch.setattr(urls, "BATCH_ROWS", 7)  # force several batches and a cross-batch duplicate
    n = 50
    src = tmp_path / "t.parquet"
    caps = [None if i % 10 == 3 else f"cap {i}" for i in range(n)]
    links = [f"http://h/{i % 45}" for i in range(n)]  # rows 45..49 repeat rows 0..4
    pd.DataFrame({"link": links, "text": caps}).to_parquet(src)
    rep = normalize_table(src, tmp_path / "o.parquet", dataset="d", url_column="link", caption_sources=["text"])
    df = pd.read_parquet(tmp_path / "o.parquet")
    assert dict(rep.dropped) == {"no_caption": 5, "duplicate_url": 4}
    assert df["url"].is_unique and len(df) == n - 9
    assert 45 not in set(df["sample_id"]) and 48 in set(df["sample_id"])  # 48 repeats row 3, which had no caption


def test_split_is_contiguous_and_complete(tmp_path):
    src = tmp_path / "u.parquet"
    pd.DataFrame({"sample_id": range(10), "url": [f"u{i}" for i in range(10)], "c": ["x"] * 10}).to_parquet(src, index=False)
    outs = [tmp_path / f"c{i}.parquet" for i in range(4)]
    assert split_table(src, outs) == [2, 3, 2, 3]
    ids = [pd.read_parquet(o)["sample_id"].tolist() for o in outs]
    assert ids == [[0, 1], [2, 3, 4], [5, 6], [7, 8, 9]]
    outs = [tmp_path / f"e{i}.parquet" for i in range(12)]  # more chunks than rows: empty chunks
    counts = split_table(src, outs)
    assert sum(counts) == 10 and counts.count(0) == 2
    assert pq.ParquetFile(outs[0]).schema_arrow.names == ["sample_id", "url", "c"]


# ---- malformed rows, quotes and literal captions (issue 9: items 2, 3, 10) --------------------------


def _lines(path, text, gz=False):
    import gzip

    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_tsv_has_no_quoting_one_line_is_one_row(tmp_path):
    src = _lines(
        tmp_path / "t.tsv",
        "url\tcaption\n"
        "http://a/1\tplain\n"
        'http://a/2\t"quoted start\n'  # an opening quote with no closing one
        "http://a/3\tthree\n"
        'http://a/4\ta 12" vinyl\n'
        'http://a/5\t"fully quoted"\n',
    )
    rep = normalize_table(src, tmp_path / "o.parquet", dataset="d", url_column="url", caption_sources=["caption"])
    df = pd.read_parquet(tmp_path / "o.parquet")
    assert rep.input_rows == 5 and rep.kept_rows == 5 and not rep.dropped
    assert df["sample_id"].tolist() == [0, 1, 2, 3, 4]
    assert df["caption"].tolist() == ["plain", '"quoted start', "three", 'a 12" vinyl', '"fully quoted"']


def test_csv_unmatched_quote_is_a_counted_bad_row_not_swallowed_rows(tmp_path):
    text = (
        "url,caption\n"
        "http://a/1,one\n"
        'http://a/2,"quoted start\n'  # line 3: the quote never closes
        "http://a/3,three\n"
        'http://a/4,"a caption\nover two lines"\n'  # a real multi-line caption: one row
        "http://a/5,five\n"
    )
    for gz in (False, True):
        src = _lines(tmp_path / ("t.csv.gz" if gz else "t.csv"), text, gz=gz)
        out = tmp_path / "o.parquet"
        rep = normalize_table(src, out, dataset="d", url_column="url", caption_sources=["caption"])
        df = pd.read_parquet(out)
        assert rep.input_rows == 5 and rep.kept_rows == 4
        assert dict(rep.dropped) == {"bad_row": 1}
        assert [b["line"] for b in rep.bad_rows] == [3]
        assert "quote" in rep.bad_rows[0]["problem"] and "line 4" in rep.bad_rows[0]["problem"]
        assert df["sample_id"].tolist() == [0, 2, 3, 4]  # the bad row keeps its id: later ids are stable
        assert df["caption"].tolist() == ["one", "three", "a caption\nover two lines", "five"]
        assert rep.to_dict()["bad_rows"] == rep.bad_rows

    with pytest.raises(TableError, match=r"t\.csv, line 3: .*quote.*on_bad_row: drop"):
        normalize_table(tmp_path / "t.csv", tmp_path / "e.parquet", dataset="d", url_column="url",
                        caption_sources=["caption"], on_bad_row="error")
    assert not (tmp_path / "e.parquet").exists()


def test_dreamlip_row_with_extra_column_is_a_counted_drop_with_its_line(tmp_path):
    src = tmp_path / "cc3m.csv"
    _dreamlip(src, [(f"http://a/{i}.jpg", f"raw {i}", "s", "long\ncaption") for i in range(4)])
    # append a row with 9 fields (one too many) and a good row after it
    with open(src, "a", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["http://a/bad.jpg", "raw bad", "ib", "ib long", "s", "l", "lla", "lla long", "extra"])
        w.writerow(["http://a/5.jpg", "raw 5", "ib", "ib long", "s", "l", "lla", "lla long"])
    kw = dict(dataset="cc3m", url_column="Image Path", caption_sources=["raw_caption", "longSV_captions"], fmt="dreamlip")
    rep = normalize_table(src, tmp_path / "o.parquet", **kw)
    df = pd.read_parquet(tmp_path / "o.parquet")
    # header = line 1; each of the four rows spans two lines (2-3, 4-5, 6-7, 8-9); the bad row is line 10
    assert rep.bad_rows == [{"line": 10, "problem": "9 fields, expected 8"}]
    assert rep.input_rows == 6 and rep.kept_rows == 5 and dict(rep.dropped) == {"bad_row": 1}
    assert df["sample_id"].tolist() == [0, 1, 2, 3, 5]
    assert df["raw_caption"].tolist()[-1] == "raw 5"

    with pytest.raises(TableError, match=r"cc3m\.csv, line 10: 9 fields, expected 8"):
        normalize_table(src, tmp_path / "e.parquet", on_bad_row="error", **kw)


def test_captions_none_na_are_text_only_empty_is_missing(tmp_path):
    words = ["None", "NA", "N/A", "null", "nan", "NaN"]
    rows = [(f"http://a/{i}", w) for i, w in enumerate(words)] + [("http://a/e", "   "), ("None", "a url named None")]
    src = tmp_path / "t.csv"
    with open(src, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("url", "caption"), *rows])
    rep = normalize_table(src, tmp_path / "o.parquet", dataset="d", url_column="url", caption_sources=["caption"])
    df = pd.read_parquet(tmp_path / "o.parquet")
    assert df["caption"].tolist() == words
    assert dict(rep.dropped) == {"no_caption": 1, "bad_scheme": 1}  # "None" as a URL is not an empty URL

    pq_src = tmp_path / "t.parquet"
    pd.DataFrame({"url": ["http://a/1", "http://a/2", "http://a/3", None], "caption": ["None", None, "", "x"]}).to_parquet(pq_src)
    rep = normalize_table(pq_src, tmp_path / "p.parquet", dataset="d", url_column="url", caption_sources=["caption"])
    assert pd.read_parquet(tmp_path / "p.parquet")["caption"].tolist() == ["None"]
    assert dict(rep.dropped) == {"no_caption": 2, "empty_url": 1}

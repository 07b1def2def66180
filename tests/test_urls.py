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
            ("http://a/4.jpg", "NaN", " ", ""),  # no caption in any source
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

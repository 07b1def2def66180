"""End-to-end: the real data rules (normalize -> split -> img2dataset -> filter -> cleanup) against a
loopback HTTP server serving good and bad images."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import noisy_jpeg, snakemake, solid, write_config
from imageserver import serve
from sailflow.data.download import DownloadError, browser_url, download_chunk
from sailflow.data.filter import filter_chunk
from sailflow.data.images import ImageLimits, decode_rgb
from sailflow.data.shards import read_sample_bytes

pytestmark = pytest.mark.e2e


def _palette_with_alpha() -> bytes:
    img = Image.new("P", (64, 64), 0)
    img.putpalette([0, 0, 255, 255, 0, 0] + [0, 0, 0] * 254)
    img.paste(1, (16, 16, 48, 48))
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=0)
    return buf.getvalue()


def _gray16() -> bytes:
    import io

    img = Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _files() -> dict[str, bytes]:
    files = {f"good_{i}": noisy_jpeg(i) for i in range(6)}
    files.update(
        cmyk=solid((200, 30, 30), mode="CMYK", fmt="JPEG", quality=95),
        palette_alpha=_palette_with_alpha(),
        gray16=_gray16(),
        tiny=solid((0, 200, 0), size=(1, 1)),
        huge=solid((0, 0, 200), size=(300, 300)),
        wide=solid((0, 100, 100), size=(200, 20)),
        truncated=noisy_jpeg(99, size=(128, 128))[:1500],
        html=b"<html><body>not an image</body></html>",
        dupcontent=noisy_jpeg(1),  # the same bytes as good_1
    )
    files["café 7"] = noisy_jpeg(7)  # a space and a non-ASCII letter in the URL
    files["a b"] = noisy_jpeg(8)
    return files


LONG = "good_4 " + "with a very long caption " * 2000
NON_ASCII = "good_5 ein rotes Quadrat \u2014 \u8d64\u3044\u56db\u89d2 \U0001f7e5"


def _rows(base: str) -> list[tuple[str, str | None, str | None]]:
    f = lambda name: f"{base}/f/{name}"  # noqa: E731
    return [
        (f("good_0"), "photo of good_0", "a long description of good_0"),
        (f("good_1"), "photo of good_1", "good_1 in detail"),
        (f"{base}/status/404", "good_404", "missing"),
        (f("cmyk"), "cmyk red", "a cmyk jpeg"),
        (f"{base}/status/500", "server error", "oops"),
        (f("good_2"), None, "good_2 has no raw caption"),
        (f"{base}/hang/good_3", "hangs", "never arrives"),
        (f("html"), "html", "an html page"),
        (f("palette_alpha"), "palette_alpha red square", "palette png with transparency"),
        (f("truncated"), "truncated", "half a jpeg"),
        (f("tiny"), "tiny", "one pixel"),
        (f("gray16"), "gray16", "sixteen bit grey"),
        (f("huge"), "huge", "too many pixels"),
        (f("wide"), "wide", "a banner"),
        (f("good_0"), "duplicate url of good_0", "again"),
        (f("dupcontent"), "dupcontent", "same bytes as good_1"),
        ("", "no url", "none"),
        ("ftp://example.invalid/x.jpg", "ftp", "wrong scheme"),
        (f("good_3"), "  ", None),
        (f("good_4"), LONG, "good_4 long"),
        (f("good_5"), NON_ASCII, "good_5\nsecond line"),
        (f("café 7"), "café 7 with an accent", "a space and an accent in the URL"),
        (f("a b"), "a b", "a space in the URL"),
    ]


def _config(source, **over) -> dict:
    ds = {
        "source": str(source),
        "format": "table",
        "url_column": "url",
        "caption_sources": {"raw": "caption", "long": "long_caption"},
        "n_chunks": 2,
        "download": {"processes": 1, "threads": 8, "timeout": 2, "retries": 0, "number_sample_per_shard": 4, "min_success_rate": 0.0},
        "filter": {"min_side": 16, "max_pixels": 40000, "max_aspect_ratio": 3.0, "processes": 1},
    }
    ds.update(over)
    return {"default_targets": ["results/data/web/manifest.json"], "datasets": {"web": ds}}


def _write_table(path, rows):
    pd.DataFrame(rows, columns=["url", "caption", "long_caption"]).to_csv(path, index=False)


def test_download_filter_cleanup_counts_and_alignment(workdir):
    files = _files()
    name_of = {hashlib.sha256(b).hexdigest(): n for n, b in files.items() if n != "dupcontent"}
    with serve(files, hang_seconds=6) as base:
        rows = _rows(base)
        _write_table(workdir / "web.csv", rows)
        bad_line = (workdir / "web.csv").read_bytes().count(b"\n") + 1
        with open(workdir / "web.csv", "a") as f:  # a row with one field too many: counted, not fatal
            f.write(f"{base}/f/good_0,an extra,field,here\n")
        write_config(workdir, _config(workdir / "web.csv"))
        snakemake(workdir, "--cores", "2")

    data = workdir / "results/data/web"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["input_rows"] == len(rows) + 1 == 24
    assert manifest["bad_rows"] == [{"line": bad_line, "problem": "4 fields, expected 3"}]
    assert manifest["dropped"] == {
        "bad_row": 1,
        "bad_aspect_ratio": 1,
        "bad_scheme": 1,
        "duplicate_content": 1,
        "duplicate_url": 1,
        "empty_url": 1,
        "http_404": 1,
        "http_500": 1,
        "no_caption": 1,
        "timeout": 1,
        "too_many_pixels": 1,
        "too_small": 1,
        "truncated": 1,
        "undecodable": 1,
    }
    assert manifest["kept"] == 10
    assert manifest["urls"] == 19 and manifest["downloaded"] == 16
    assert manifest["empty_captions"] == {"raw": 1, "long": 0}
    assert sum(c["urls"] for c in manifest["chunks"].values()) == 19
    assert set(manifest["chunks"]) == {"0000", "0001"}

    samples = pd.concat(
        [pd.read_parquet(data / f"chunks/{c}/samples.parquet").assign(chunk=c) for c in ("0000", "0001")]
    )
    assert list(samples.columns[:8]) == ["sample_id", "key", "shard", "offset", "size", "width", "height", "url"]
    assert samples["sample_id"].is_monotonic_increasing
    kept_names = set()
    for r in samples.itertuples():
        data_bytes = read_sample_bytes(data / "chunks" / r.chunk / "images", r.shard, r.offset, r.size)
        name = name_of[hashlib.sha256(data_bytes).hexdigest()]
        kept_names.add(name)
        # the captions of every kept row belong to the image stored for it
        text = " ".join(c for c in (r.raw, r.long) if isinstance(c, str))
        assert name in text, (name, text[:80])
        assert r.url.endswith("/" + name)
        assert rows[r.sample_id][0] == r.url  # sample_id is the source row; the URL as the table wrote it
    assert kept_names == {"good_0", "good_1", "good_2", "good_4", "good_5", "cmyk", "palette_alpha", "gray16", "café 7", "a b"}

    by_name = {n: r for r in samples.itertuples() for n in [r.url.rsplit("/", 1)[-1]]}
    assert by_name["good_4"].raw == LONG.strip()  # very long caption intact (whitespace-trimmed)
    assert by_name["good_5"].raw == NON_ASCII and by_name["good_5"].long == "good_5\nsecond line"
    assert pd.isna(by_name["good_2"].raw)

    def pixels(name):
        r = by_name[name]
        b = read_sample_bytes(data / "chunks" / r.chunk / "images", r.shard, r.offset, r.size)
        return np.asarray(decode_rgb(b))

    cmyk = pixels("cmyk")
    assert cmyk.shape == (64, 64, 3) and np.abs(cmyk[32, 32].astype(int) - [200, 30, 30]).max() < 12
    pal = pixels("palette_alpha")
    assert tuple(pal[0, 0]) == (255, 255, 255) and tuple(pal[32, 32]) == (255, 0, 0)
    assert tuple(pixels("gray16")[10, 10]) == (156, 156, 156)  # 40000 >> 8, not clipped to 255


def test_missing_required_column_is_named(workdir):
    with serve(_files()) as base:
        _write_table(workdir / "web.csv", _rows(base)[:3])
        cfg = _config(workdir / "web.csv", caption_sources={"raw": "caption", "long": "long_captions"})
        write_config(workdir, cfg)
        proc = snakemake(workdir, "--cores", "1", "--show-failed-logs", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "missing required column(s) ['long_captions']" in out
    assert "'url', 'caption', 'long_caption'" in out  # the columns the file does have
    assert not (workdir / "results/data/web/urls.parquet").exists()


def test_low_success_rate_fails_the_chunk_and_keeps_shards(workdir):
    chunk = workdir / "results/data/web/chunks/0000"
    with serve(_files()) as base:
        rows = [(f"{base}/status/404/{i}", f"c{i}", "x") for i in range(6)] + [(f"{base}/f/good_0", "ok", "ok")]
        _write_table(workdir / "web.csv", rows)
        cfg = _config(workdir / "web.csv", n_chunks=1)
        cfg["datasets"]["web"]["download"]["min_success_rate"] = 0.5
        write_config(workdir, cfg)
        proc = snakemake(workdir, "--cores", "1", check=False)
        assert proc.returncode != 0
        log = (workdir / "logs/data/web/download/0000.log").read_text()
        assert "only 1 of 7 URLs downloaded" in log and "http_404" in log
        assert not (chunk / "download.json").exists()
        assert sorted(p.name for p in (chunk / "images").glob("*_stats.json")) == ["00000_stats.json", "00001_stats.json"]

        # the fix the message offers: a lower rate reaches the job (a resource, not a param) and the
        # rerun retries the failed URLs once more before it passes the gate
        cfg["datasets"]["web"]["download"]["min_success_rate"] = 0.1
        write_config(workdir, cfg)
        snakemake(workdir, "--cores", "1", str(chunk.relative_to(workdir) / "download.json"))
    summary = json.loads((chunk / "download.json").read_text())
    assert summary["shards"] == ["00000", "00001", "retry1/00000", "retry1/00001"]
    assert summary["downloaded"] == 1 and summary["failed"] == {"http_404": 6}


def _download_options(**over) -> dict:
    """Every key of the config's download section but the parallelism and the success-rate gate."""
    opts = {
        "resize_mode": "no", "image_size": 512, "resize_only_if_bigger": True, "encode_format": "jpg",
        "encode_quality": 95, "timeout": 2, "retries": 0, "number_sample_per_shard": 2,
        "user_agent_token": None, "disallowed_header_directives": ["noai", "noimageai", "noindex", "noimageindex"],
    }
    return {**opts, **over}


def test_rerun_after_a_failed_chunk_retries_failed_urls_and_keeps_good_shards(tmp_path):
    files = {f"img{i}": noisy_jpeg(200 + i) for i in range(6)}
    failing, hits = {"img1", "img2", "img4"}, Counter()
    chunk = tmp_path / "chunks/0000"
    chunk.mkdir(parents=True)
    images = chunk / "images"
    log = open(tmp_path / "download.log", "w")
    with log, serve(files, failing=failing, hits=hits) as base:
        urls = [f"{base}/flaky/img{i}" for i in range(5)] + [f"{base}/robots/img5"]
        pd.DataFrame({"sample_id": np.arange(10, 16), "url": urls}).to_parquet(chunk / "urls.parquet", index=False)
        kw = dict(dataset="web", chunk="0000", options=_download_options(), limits={}, min_success_rate=0.8, processes=1, threads=4, log=log)
        with pytest.raises(DownloadError, match=r"only 2 of 6 URLs downloaded.*rerun"):
            download_chunk(chunk / "urls.parquet", chunk / "download.json", **kw)
        assert not (chunk / "download.json").exists()
        assert hits == {f"/flaky/img{i}": 1 for i in range(5)} | {"/robots/img5": 1}
        first_run = {p.name: p.stat().st_mtime_ns for p in images.glob("0000*")}
        assert len(first_run) == 9  # three shards: tar, parquet, stats each

        failing.clear()  # the server is fixed; rerun
        summary = download_chunk(chunk / "urls.parquet", chunk / "download.json", **kw)

    # the rerun asked again for exactly the URLs that had failed on the network: not the good ones,
    # and not the one the server refused by X-Robots-Tag (a content decision, not an outage)
    assert hits == {"/flaky/img0": 1, "/flaky/img1": 2, "/flaky/img2": 2, "/flaky/img3": 1, "/flaky/img4": 2, "/robots/img5": 1}
    assert {p.name: p.stat().st_mtime_ns for p in images.glob("0000*")} == first_run  # good shards kept as they were
    assert summary["urls"] == 6 and summary["downloaded"] == 5 and summary["failed"] == {"robots_disallowed": 1}
    assert summary["shards"] == ["00000", "00001", "00002", "retry1/00000", "retry1/00001"]
    assert summary["retries"] == [{"round": "retry1", "urls": 3, "downloaded": 3}]
    assert summary == json.loads((chunk / "download.json").read_text())

    # the filter stage reads the retry shards (paths relative to images/) and every image is its sample's
    report = filter_chunk(summary, images, chunk / "filtered.parquet", chunk / "filter.json", limits=ImageLimits(min_side=16))
    assert report["kept"] == 5
    filtered = pd.read_parquet(chunk / "filtered.parquet")
    assert filtered["sample_id"].tolist() == [10, 11, 12, 13, 14]
    assert filtered["shard"].tolist() == ["00000.tar", "retry1/00000.tar", "retry1/00000.tar", "00001.tar", "retry1/00001.tar"]
    for r in filtered.itertuples():
        assert read_sample_bytes(images, r.shard, r.offset, r.size) == files[f"img{r.sample_id - 10}"]


def test_urls_with_spaces_and_non_ascii_characters_download(tmp_path):
    files = {"café.jpg": noisy_jpeg(1), "a b.jpg": noisy_jpeg(2), "done already.jpg": noisy_jpeg(3)}
    local = tmp_path / "a folder" / "ünï côde.jpg"
    local.parent.mkdir()
    local.write_bytes(noisy_jpeg(4))
    chunk = tmp_path / "chunk"
    chunk.mkdir()
    with open(tmp_path / "download.log", "w") as log, serve(files) as base:
        urls = [f"{base}/f/café.jpg", f"{base}/f/a b.jpg", f"{base}/f/done%20already.jpg", f"file://{local}"]
        pd.DataFrame({"sample_id": np.arange(4), "url": urls}).to_parquet(chunk / "urls.parquet", index=False)
        summary = download_chunk(chunk / "urls.parquet", chunk / "download.json", dataset="web", chunk="0000",
                                 options=_download_options(number_sample_per_shard=10), limits={},
                                 min_success_rate=1.0, threads=4, log=log)
    assert summary["downloaded"] == 4 and summary["failed"] == {}
    assert pd.read_parquet(chunk / "urls.parquet")["url"].tolist() == urls  # the chunk's table is untouched


def test_browser_url_percent_encodes_like_a_browser():
    assert browser_url("http://h/caf\u00e9 au lait.jpg") == "http://h/caf%C3%A9%20au%20lait.jpg"
    assert browser_url("https://b\u00fccher.example:8080/a%20b/c d?q=\u00fc&x=1 2#frag") == (
        "https://xn--bcher-kva.example:8080/a%20b/c%20d?q=%C3%BC&x=1%202#frag"
    )
    assert browser_url("http://h/100%.jpg?a=%zz") == "http://h/100%25.jpg?a=%25zz"  # a lone % is not an escape
    keep = "http://user:pw@h/p;x=1/a,b(c)!$'*+~/@:?k=v&w=[1]"
    assert browser_url(keep) == keep  # reserved characters and ASCII URLs unchanged
    assert browser_url("file:///tmp/a folder/\u00e9.jpg") == "file:///tmp/a%20folder/%C3%A9.jpg"
    assert browser_url("http://[::1]:80/x y") == "http://[::1]:80/x%20y"

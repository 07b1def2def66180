"""Fetch a dataset's source table from its configured URL (atomically)."""

import shutil
import urllib.request

from sailflow.io import atomic_path
from sailflow.logs import log_to


def main(smk):
    log_to(smk.log[0])
    url = smk.params.url
    print(f"fetching {url}")
    with atomic_path(smk.output[0]) as tmp, urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
        shutil.copyfileobj(r, f, length=1 << 22)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821

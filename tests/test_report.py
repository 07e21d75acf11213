"""The HTML report: self-contained, every section present, renders in headless Chromium without
console errors."""
import os
import re
import shutil
import subprocess
import tempfile
from typing import Optional

import pytest

from pyspark.sql import functions as F

from recsys_spark import cli, schema, tables


def find_chromium() -> Optional[str]:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def check_rendering(html_path: str, png_path: str, width: int = 1200, height: int = 3000) -> list[str]:
    """Open the file in headless Chromium, write a screenshot, return the console errors it logged."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium); scripts/setup.sh installs it as root")
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={profile}",
             "--enable-logging=stderr", "--v=0", f"--window-size={width},{height}", f"--screenshot={png_path}",
             "file://" + os.path.abspath(html_path)],
            capture_output=True, text=True, timeout=120)
    if not os.path.isfile(png_path):
        raise RuntimeError(f"Chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return [line for line in proc.stderr.splitlines()
            if re.search(r"CONSOLE|Uncaught|Failed to load resource|net::ERR_", line)]


@pytest.mark.slow
def test_html_report_is_self_contained_and_renders_without_console_errors(spark, shop_copy, tmp_path):
    cfg = shop_copy
    # Item titles come from the data: one that is markup must show as text, never run.
    content_loc = tables.location(cfg.tables_root, schema.ITEM_CONTENT)
    planted = F.concat(F.lit('<img src=x onerror="notDefined()">'), F.col("item_id"))
    tables.overwrite(tables.read(spark, content_loc).withColumn("title", planted), content_loc)
    cli.run_stage(spark, cfg, "abtest-simulate")  # the report reads the A/B log out
    cli.run_stage(spark, cfg, "evaluate")  # a second evaluation: the report compares with the previous one
    path = cli.run_stage(spark, cfg, "report")
    doc = open(path).read()
    assert not re.search(r'(src|href)="(https?:)?//', doc)  # nothing loaded from outside
    assert "<img src=x" not in doc and "&lt;img src=x onerror=&quot;notDefined()&quot;&gt;i0" in doc
    # activity, exposure, training, A/B, reliability diagram
    assert len(re.findall(r'src="data:image/png;base64,', doc)) == 5
    for text in ("Headline metrics", "attention", "popularity", "Against the previous run", "because you viewed",
                 "sample ratio", "reliability diagram", "log_loss"):
        assert text in doc
    png = tmp_path / "report.png"
    assert check_rendering(path, str(png)) == []
    assert png.stat().st_size > 50_000
    # The check does catch a page error.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>notDefined()</script></body></html>")
    assert any("notDefined" in e for e in check_rendering(str(bad), str(tmp_path / "bad.png")))

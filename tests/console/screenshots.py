"""The README's screenshots of the console: ``python -m tests.console.screenshots docs/img``.

Builds a longer version of the test dataset (two weeks of known flows) in a temporary directory, serves it with
``flowmed console`` and saves one screenshot per page (1280 px wide, the top of the page, 256-colour PNG) into the
given directory. Needs Debian's chromium and chromium-driver.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from tests.console.dataset import CYCLE, PUBLIC, build
from tests.console.helpers import ConsoleProcess

PAGES = {
    "console-exporters": "/exporters?from=2026-11-09T00:00&to=2026-11-16T00:00",
    "console-traffic": "/traffic?by=src_addr&metric=bytes&from=2026-11-12T00:00&to=2026-11-14T00:00",
    "console-subscriber": f"/subscriber?id=alice&cycle={CYCLE}",
    "console-compliance": f"/compliance?address={PUBLIC}&port=40100&protocol=6&at=2026-11-02T08:23:20&window=300",
    "console-reconciliation": "/reconciliation?from=2026-11-03T06:00&to=2026-11-04T06:00",
}
WIDTH, HEIGHT = 1280, 1150
TALL = {"console-subscriber": 1640}


def main(out: Path) -> None:
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flowmed-shots-") as tmp:
        root = Path(tmp)
        dataset = build(root, hours=14 * 24)
        console = ConsoleProcess(dataset, root, cwd=root, store="data")  # the header shows the path as configured
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--hide-scrollbars", "--lang=en-GB", f"--window-size={WIDTH},{HEIGHT}",
                    f"--user-data-dir={root / 'chromium'}"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            console.wait_ready()
            for name, path in PAGES.items():
                driver.get(console.url + path)
                for _ in range(300):
                    if driver.execute_script("return document.body.dataset.chartsRendered === "
                                             "document.body.dataset.charts"):
                        break
                    time.sleep(0.1)
                driver.set_window_size(WIDTH, TALL.get(name, HEIGHT))
                time.sleep(0.5)
                png = out / f"{name}.png"
                driver.save_screenshot(str(png))
                Image.open(png).convert("RGB").quantize(256).save(png, optimize=True)
                print(png, png.stat().st_size)
        finally:
            driver.quit()
            console.stop()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img"))

"""``flowmed ipdr-report`` on the CGNAT scenario's store: the DoT IPDR / NAT log field list in order (date and time
in separate columns), the generic layout, customer fields from the directory file, CSV and XLSX; retention."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from collector.config import DOT_IPDR_FIELDS, load
from mediation.compliance.report import GENERIC_FIELDS, ReportError, check_fields, load_directory
from mediation.compliance.tables import IP_DETAIL_RECORDS
from storage.store import ParquetStore
from tests.mediation.compliance.test_trace import built  # noqa: F401  (the module's scenario store)

pytestmark = [pytest.mark.external]

MANDATED = ["user_id", "user_name", "source_ip", "source_port", "public_ip", "public_port", "destination_ip",
            "destination_port", "start_date", "start_time", "end_date", "end_time"]
"""The DoT IPDR / NAT log parameters as the mandate lists them: user id and name, private source address and port,
public (NAT) address and port, destination address and port, start and end date and time in separate columns."""


def report(cfg, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collector.cli", "ipdr-report", *args, "--set",
                           f"store.path={cfg.store.path}", "--set",
                           f"compliance.directory_file={cfg.compliance.directory_file}"],
                          capture_output=True, text=True, timeout=120)


def test_default_layout_is_the_mandated_field_list():
    assert list(DOT_IPDR_FIELDS[:len(MANDATED)]) == MANDATED
    assert set(DOT_IPDR_FIELDS) <= set(GENERIC_FIELDS)
    assert check_fields(DOT_IPDR_FIELDS) == list(DOT_IPDR_FIELDS)
    with pytest.raises(ReportError, match="bogus"):
        check_fields(["user_id", "bogus"])


def test_csv_report_for_a_public_address_and_port(built):  # noqa: F811
    cfg, _ = built
    out = report(cfg, "--from", "2026-03-02T14:00:00Z", "--to", "2026-03-02T15:00:00Z", "--address", "203.0.113.7",
                 "--port", "40112")
    assert out.returncode == 0, out.stderr
    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert rows[0] == list(DOT_IPDR_FIELDS)
    body = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert [(r["user_id"], r["source_ip"], r["source_port"], r["public_ip"], r["public_port"], r["destination_ip"],
             r["destination_port"], r["start_date"], r["start_time"], r["end_date"], r["end_time"]) for r in body] == [
        ("alice", "100.64.0.1", "5000", "203.0.113.7", "40112", "198.51.100.10", "443", "2026-03-02", "14:01:10",
         "2026-03-02", "14:01:30"),
        ("bob", "100.64.0.2", "6000", "203.0.113.7", "40112", "198.51.100.11", "443", "2026-03-02", "14:15:50",
         "2026-03-02", "14:16:40")]
    alice, bob = body
    # the address allocation (RADIUS session) and the customer from the directory file
    assert (alice["allocation_start_time"], alice["allocation_end_time"]) == ("13:00:00", "14:30:00")
    assert bob["allocation_end_date"] == ""  # still open
    assert (alice["customer_name"], alice["customer_address"], alice["customer_phone"], alice["customer_email"]) == (
        "Alice Example", "1 Main St, Springfield", "+1-555-0101", "alice@example.net")
    assert bob["customer_email"] == "bob@example.net"


def test_xlsx_generic_report_for_a_subscriber(built, tmp_path):  # noqa: F811
    cfg, _ = built
    path = tmp_path / "dave.xlsx"
    out = report(cfg, "--from", "2026-03-02T14:00:00Z", "--to", "2026-03-02T15:00:00Z", "--subscriber", "dave",
                 "--format", "xlsx", "--layout", "generic", "-o", str(path))
    assert out.returncode == 0, out.stderr
    sheet = read_xlsx(path)
    assert sheet[0] == list(GENERIC_FIELDS)
    row = dict(zip(sheet[0], sheet[1], strict=True))
    assert (row["user_id"], row["source_ip"], row["source_port"], row["public_ip"], row["public_port"],
            row["bytes"], row["status"], row["binding_source"]) == (
        "dave", "100.64.0.1", "7000", "203.0.113.7", "40200", "5000", "attributed", "radius")
    assert row["customer_name"] == ""  # not in the directory
    assert len(sheet) == 2


def test_report_field_list_is_configurable(built):  # noqa: F811
    cfg, _ = built
    out = report(cfg, "--from", "2026-03-02T14:00:00Z", "--to", "2026-03-02T15:00:00Z", "--subscriber", "erin",
                 "--set", 'compliance.report_fields=["start_date", "start_time", "user_id", "source_ip", "bytes"]')
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["start_date,start_time,user_id,source_ip,bytes",
                                       "2026-03-02,14:05:00,erin,2001:db8:e:1::5,9000"]
    bad = report(cfg, "--from", "2026-03-02T14:00:00Z", "--to", "2026-03-02T15:00:00Z", "--subscriber", "erin",
                 "--set", 'compliance.report_fields=["user_id", "ssn"]')
    assert bad.returncode == 1 and "ssn" in bad.stderr


def test_directory_file_errors(tmp_path):
    bad = tmp_path / "d.csv"
    bad.write_text("name,phone\nx,y\n")
    with pytest.raises(ReportError, match="subscriber_id"):
        load_directory(bad)
    with pytest.raises(ReportError, match="cannot read"):
        load_directory(tmp_path / "missing.csv")
    assert load_directory("") == {}


def test_retention_drops_whole_compliance_partitions(tmp_path):
    """compliance.retention_days reaches the store's retention: expired hour partitions of ip_detail_records and
    nat_events are dropped whole, younger ones stay."""
    cfg = load(None, [f"store.path={tmp_path}", "compliance.retention_days=730"])
    now_s = 1_800_000_000.0
    store = ParquetStore.for_config(cfg, housekeeper=False)
    assert store.retention_days["ip_detail_records"] == 730 and store.retention_days["nat_events"] == 730
    old, young = int((now_s - 731 * 86400) * 1000), int((now_s - 729 * 86400) * 1000)
    import numpy as np

    for i, t in enumerate((old, young)):
        store.write(IP_DETAIL_RECORDS, IP_DETAIL_RECORDS.to_arrow({"flow_start": np.array([t]),
                                                                    "bytes": np.array([1], np.uint64)}), i + 1)
    dropped = store.apply_retention(now_s)
    assert len(dropped) == 1 and "ip_detail_records" in dropped[0]
    left = [p for p in Path(tmp_path, "ip_detail_records").glob("date=*/hour=*")]
    assert len(left) == 1
    store.close()


def read_xlsx(path: Path) -> list[list[str]]:
    """Cell texts of the first sheet (shared strings and numbers), read with the standard library."""
    with zipfile.ZipFile(path) as z:
        strings = re.findall(r"<si><t[^>]*>(.*?)</t></si>", z.read("xl/sharedStrings.xml").decode())
        sheet = z.read("xl/worksheets/sheet1.xml").decode()
    rows = []
    for row in re.findall(r"<row[^>]*>(.*?)</row>", sheet):
        cells: dict[int, str] = {}
        for attrs, value in re.findall(r"<c ([^>]*?)(?:/>|>(.*?)</c>)", row):
            letters = re.search(r'r="([A-Z]+)\d+"', attrs).group(1)
            col = 0
            for ch in letters:
                col = col * 26 + ord(ch) - 64
            v = re.search(r"<v>(.*?)</v>", value or "")
            text = v.group(1) if v else ""
            if 't="s"' in attrs and text:
                text = strings[int(text)]
            cells[col - 1] = text.replace("&amp;", "&")
        width = len(GENERIC_FIELDS)
        rows.append([cells.get(i, "") for i in range(width)])
    return rows


def test_public_side_of_inside_router_records_from_the_nat_log(built):  # noqa: F811
    """Records from a router inside the NAT carry no post-NAT fields: the report takes the public address and port
    from the NAT session (exact port) or port block (its range) that held the inside address then."""
    from mediation.compliance.report import fill_public_side, nat_sql
    from storage.query import QueryEngine

    cfg, _ = built

    def row(ip: str, port: int, hhmmss: str) -> dict:
        h, m, s = (int(x) for x in hhmmss.split(":"))
        return {"source_ip": ip, "source_port": port, "public_ip": "", "public_port": "",
                "_start_ms": 1_772_409_600_000 + (h * 3600 + m * 60 + s) * 1000, "_protocol": 6}

    rows = [row("100.64.0.1", 5000, "14:01:15"),  # alice's session 5000 -> 203.0.113.7:40112
            row("100.64.0.1", 5001, "14:01:15"),  # another port of alice: no session, no block
            row("100.64.0.3", 3400, "14:05:00"),  # carol's block
            row("100.64.0.3", 3400, "14:17:00"),  # after carol's block was released (14:16:40)
            row("100.64.0.2", 4444, "14:18:20"),  # bob's block since 14:18:20 (the allocation second)
            row("100.64.0.1", 5000, "14:11:00")]  # alice's session deleted at 14:10:00
    with QueryEngine.for_config(cfg, "store") as engine:
        sql = nat_sql(rows, 1_772_460_000_000, 1_772_463_600_000, 86400, engine.source)
        assert fill_public_side(rows, engine.query(sql, text_addresses=False)) == 3
    assert [(r["public_ip"], r["public_port"]) for r in rows] == [
        ("203.0.113.7", 40112), ("", ""), ("203.0.113.8", "1024-1151"), ("", ""), ("203.0.113.8", "1024-1151"),
        ("", "")]
    assert nat_sql([{**rows[0], "public_ip": "203.0.113.7"}], 0, 1, 1, engine.source) is None

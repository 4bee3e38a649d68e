"""Binding ids across the collector hosts of a cluster: each host numbers bindings in its own database and all write
into one ``bindings`` table, so the id a table carries holds the host (``service.host_index``) in its top bits, the
same in ``bindings`` and in the ``ip_detail_records`` that name the binding."""

from __future__ import annotations

import numpy as np
import pytest

from collector.bindings_db import open_bindings
from collector.config import load
from decoders.schema import FLOWS, ipv4_mapped
from mediation.compliance.stage import ComplianceStage
from mediation.subscribers.bindings import Bindings
from mediation.subscribers.store import HOST_SHIFT

T0 = 1_767_225_600_000


def _host(tmp_path, host: int) -> tuple[Bindings, list[int]]:
    b = Bindings(str(tmp_path / f"bindings-{host}.db"), host=host)
    b.open("alice", "100.64.0.1", T0 - 60_000, source="radius", session_id="s1")
    batch = b.commit()
    b.refresh()
    return b, batch.column("binding_id").to_pylist()


def test_two_hosts_write_distinct_ids_for_their_first_binding(tmp_path):
    (_, ids0), (_, ids5) = _host(tmp_path, 0), _host(tmp_path, 5)
    assert ids0 == [1]  # host 0 keeps the ids of a single host
    assert ids5 == [(5 << HOST_SHIFT) | 1]


def test_compliance_records_name_the_binding_as_the_bindings_table_does(tmp_path):
    b, ids = _host(tmp_path, 9)
    cfg = load(None, [f"store.path={tmp_path / 'data'}", "compliance.enabled=true"])
    cols = FLOWS.empty_columns(2)
    cols["time_received"][:] = T0
    cols["flow_start"][:] = T0 - 1000
    cols["flow_end"][:] = T0
    cols["bytes"][:] = 100
    cols["packets"][:] = 1
    cols["exporter"][:] = ipv4_mapped(np.array([0xC0000201] * 2, np.uint32))
    cols["src_addr"][:] = ipv4_mapped(np.array([0x64400001, 0x64400099], np.uint32))  # alice, nobody
    cols["dst_addr"][:] = ipv4_mapped(np.array([0x08080808] * 2, np.uint32))
    records = ComplianceStage(cfg, b).process(FLOWS.to_arrow(cols), T0)["ip_detail_records"]
    assert records.column("binding_id").to_pylist() == [ids[0], 0]
    assert records.column("subscriber_id").to_pylist()[0] == "alice"


def test_the_process_opens_its_bindings_with_the_host_index(tmp_path):
    cfg = load(None, [f"store.path={tmp_path}", "service.host_index=3"])
    assert open_bindings(cfg).id_base == 3 << HOST_SHIFT
    with pytest.raises(ValueError, match="0 to 63"):
        Bindings(None, host=64)

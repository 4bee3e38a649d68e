"""Compliance: the NAT log and IP detail records, ``flowmed trace`` and the IPDR/NAT report (docs/compliance.md)."""

"""IPDR/SP usage: SAMIS records to usage deltas per service flow, their journal and tables (docs/ipdr.md)."""

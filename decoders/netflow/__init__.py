"""NetFlow v5, v9 and IPFIX: datagrams to the columns of the ``flows`` table (sans-I/O)."""

"""sFlow version 5: the decoder (:class:`SflowDecoder`), the ``interface_counters`` table and :func:`is_sflow`.

``is_sflow`` and the wire constants import without numba; the decoder compiles its kernels on first use
(``decoders.sflow.decoder.warm_up`` does it ahead of traffic).
"""

from decoders.sflow.wire import PORT, REASONS, SFLOW_VERSION, is_sflow

__all__ = ["PORT", "REASONS", "SFLOW_VERSION", "is_sflow"]

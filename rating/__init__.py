"""Rating: tariff plans turn closed usage into rated usage records (``rated_usage``) a BSS can bill from.

Modules: :mod:`rating.plans` (plans file), :mod:`rating.assignments` (who is on which plan), :mod:`rating.timebase`
(local time, bands and cycles across DST), :mod:`rating.money` (exact integer money), :mod:`rating.engine` (the
vectorised, pure rating function), :mod:`rating.tables` (tables and the current-state query), :mod:`rating.lease`
(one job at a time, in the store), :mod:`rating.job` (the rating job), :mod:`rating.rerate`, :mod:`rating.billrun`,
:mod:`rating.explain`. See docs/rating.md.
"""

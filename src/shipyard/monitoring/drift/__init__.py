"""Drift: how far a served model's current data is from its reference (pure: no I/O, no server imports).

* ``profile``      the reference profile of a version's data: per-feature quantile bins, category counts,
                   null rates, ranges, the prediction distribution and a multivariate (PCA, MMD) summary;
                   ``profile_of`` for arrays in memory, ``ProfileBuilder`` for files of any size
* ``window``       a window of current rows binned on the profile's edges in bounded memory, with
                   data-quality counters; windows of replicas merge
* ``statistics``   the univariate tests on raw arrays and on binned counts (SciPy, imported lazily)
* ``detector``     ``compare(profile, window, settings)``: calibrated per-feature and dataset drift
* ``report_html``  one self-contained HTML page of a report (inline SVG charts, no network)

Around it, with I/O: ``monitoring.drift_monitor`` (the server's windows and reports),
``registry.reference`` (the profile made at registration) and ``jobs.drift`` (files).
"""

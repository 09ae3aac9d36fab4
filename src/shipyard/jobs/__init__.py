"""Jobs that run a registered model over data: batch prediction (``shipyard.jobs.batch``).

Nothing is imported here: each job pulls in its engine (pyarrow, Spark, Dask) only when used.
"""

"""Which version answers a request for a served name, and how a fleet moves from one version to the next.

* ``policy``       traffic policies (pure): arms, weights, sticky keys, shadows, canary plans; choosing an arm
* ``store``        policies in the registry database, their history, leases
* ``router``       the ``Router`` protocol, ``AliasRouter`` (a name goes where it was served) and
                   ``PolicyRouter`` (names with a policy go by it)
* ``tables``       the rollout tables (created by registry migration 0003)
* ``arm_stats``    per-arm counters every replica adds to: the fleet's numbers
* ``statistics``   estimates, fixed-horizon tests and intervals, SRM, power, FDR (pure, SciPy)
* ``sequential``   always-valid inference: mSPRT p-values, confidence sequences, non-inferiority (pure)
* ``bandit``       Thompson sampling and epsilon-greedy weights (pure)
* ``canary``       a canary step's gates and decision (pure)
* ``gates``        promotion gates: signature, holdout score, latency budget
* ``actions``      start, pause, resume, abort, promote
* ``controller``   the loop that steps canaries and bandits, one replica at a time
* ``report``       an experiment's report (pure); ``experiments`` reads it for the API, CLI and /metrics
"""

"""Imported by worker forkservers: skops (and scikit-learn) without the imports it drags in."""

from shipyard.runtime.sklearn import import_skops

import_skops()

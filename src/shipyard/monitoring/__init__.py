"""Seeing what a served model does: prediction events and the observers that record them.

* ``events``   ``PredictionEvent``, the ``PredictionObserver`` protocol, and ``Observers``,
               which hands every event to every observer off the request path
"""

"""Wire formats: the Open Inference Protocol codec and the simple JSON API."""

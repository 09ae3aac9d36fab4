"""Model hosting: which versions a process holds, where model calls run, how a version is loaded.

Shared by the online server, stream jobs and asynchronous requests:

* ``repository``  the versions one process serves: resolution of names and aliases, loading, release
* ``executor``    where a model call runs (the ``Executor`` protocol; in process by default)
* ``compiled``    the ONNX twin of a native model (``--runtime onnx``), converted once and cached
"""

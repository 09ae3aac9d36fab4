"""The gRPC transport: the Open Inference Protocol's ``inference.GRPCInferenceService``.

Needs the ``grpc`` extra (grpcio, protobuf). Importing this package imports
neither; ``server`` and ``service`` do. The messages, codec and metadata keys
live in ``shipyard.protocol.grpc`` (the client uses them too).
"""

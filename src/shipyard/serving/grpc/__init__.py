"""The gRPC transport: the Open Inference Protocol's ``inference.GRPCInferenceService``.

Needs the ``grpc`` extra (grpcio, protobuf). Importing this package imports
neither; ``server``, ``service`` and ``codec`` do. ``inference_pb2*.py`` are
generated from ``inference.proto`` by ``scripts/gen_grpc.sh`` and committed.
"""

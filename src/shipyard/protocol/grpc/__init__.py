"""The Open Inference Protocol over gRPC: messages, codec and metadata keys, for server and client.

Needs the ``grpc`` extra (grpcio, protobuf). Importing this package imports
neither; ``codec`` and the generated modules do. ``inference_pb2*.py`` are
generated from ``inference.proto`` by ``scripts/gen_grpc.sh`` and committed.
"""

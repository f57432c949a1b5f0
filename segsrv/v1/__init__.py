"""Generated protobuf / gRPC code of the segsrv.v1 contract (proto/segsrv/v1/).

The modules beside this file are produced by the build (setup.py runs
grpcio-tools' protoc); they are never edited or committed.
"""

"""Call /SpiffeWorkloadAPI/ValidateJWTSVID over a Unix socket with grpcio (gRPC C-core).

C-core sends the percent-encoded socket path as :authority, which is the case under test.
Usage: validate_jwtsvid.py SOCKET_PATH. Prints "code=<StatusCode name>" and
"details=<message>" and exits 0 whatever the status, so the Rust test judges the outcome.
"""

import sys

import grpc


def main() -> int:
    socket_path = sys.argv[1]
    with grpc.insecure_channel("unix:" + socket_path) as channel:
        call = channel.unary_unary(
            "/SpiffeWorkloadAPI/ValidateJWTSVID",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            # An empty protobuf message; the metadata is what the Workload API requires.
            call(b"", timeout=10, metadata=[("workload.spiffe.io", "true")])
            print("code=OK")
            print("details=")
        except grpc.RpcError as err:
            print(f"code={err.code().name}")
            print(f"details={err.details()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

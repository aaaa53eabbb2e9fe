"""Call /SpiffeWorkloadAPI/FetchJWTBundles over a Unix socket with grpcio (gRPC C-core).

C-core sends the percent-encoded socket path as :authority, which is the case under test.
No protobuf code is generated: the request is the empty message (zero bytes) and each
response is printed as raw bytes in hex, so the Rust test decodes and checks it.
Usage: fetch_jwt_bundles.py SOCKET_PATH. Prints "response=<hex>" for each streamed
message, then "code=<StatusCode name>" and "details=<message>", and exits 0 whatever the
status, so the Rust test judges the outcome.
"""

import sys

import grpc


def main() -> int:
    socket_path = sys.argv[1]
    with grpc.insecure_channel("unix:" + socket_path) as channel:
        call = channel.unary_stream(
            "/SpiffeWorkloadAPI/FetchJWTBundles",
            request_serializer=lambda _request: b"",
            response_deserializer=lambda raw: raw,
        )
        try:
            responses = call(None, timeout=10, metadata=[("workload.spiffe.io", "true")])
            for response in responses:
                print(f"response={response.hex()}")
            print("code=OK")
            print("details=")
        except grpc.RpcError as err:
            print(f"code={err.code().name}")
            print(f"details={err.details()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

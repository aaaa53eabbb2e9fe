"""Drive a twid agent's SDS v3 service with the envoy-data-plane client and record what it sent.

Usage: sds_check.py SOCKET SUMMARY_JSON ROTATION_TIMEOUT_SECONDS BOOTSTRAP_YAML

1. FetchSecrets for `default`, `ROOTCA` and `ALL`, sent as soon as SOCKET exists. The agent
   binds SOCKET before its first sync, so a script started before the agent sends this request
   before that sync.
2. FetchSecrets for every SDS resource name in the Envoy bootstrap BOOTSTRAP_YAML.
3. DeltaSecrets, which the agent must reject with UNIMPLEMENTED.
4. StreamSecrets for `default` and `ROOTCA`. The script ACKs the first response and waits up
   to ROTATION_TIMEOUT_SECONDS for the next one, an SVID rotation. It NACKs that one with the
   error message "sds_check rejects this response". Then it records any response that still
   arrives before the agent ends the stream.

The caller asserts on SUMMARY_JSON. This script fails only when a call fails unexpectedly.
"""

import datetime
import itertools
import json
import os
import queue
import sys
import threading
import time

import grpc
import yaml
from cryptography import x509

# Importing these modules registers the messages that Any.unpack needs.
import envoy_data_plane.envoy.extensions.transport_sockets.tls.v3  # noqa: F401
from envoy_data_plane.envoy.config.core.v3 import Node
from envoy_data_plane.envoy.extensions.transport_sockets.tls.v3 import (
    Secret,
    SpiffeCertValidatorConfig,
)
from envoy_data_plane.envoy.service.discovery.v3 import DeltaDiscoveryRequest, DiscoveryRequest
from envoy_data_plane.envoy.service.secret.v3 import SecretDiscoveryServiceSyncStub
from envoy_data_plane.google.rpc import Status
from envoy_docs_check import walk

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
NACK_MESSAGE = "sds_check rejects this response"
NODE = Node(id="sds-check", cluster="sds-check")


def certificates(pem):
    return x509.load_pem_x509_certificates(pem)


def describe_tls_certificate(tls):
    chain = certificates(tls.certificate_chain.inline_bytes)
    leaf = chain[0]
    uris = leaf.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.UniformResourceIdentifier)
    return {
        "kind": "tls_certificate",
        "spiffe_ids": uris,
        "serial": format(leaf.serial_number, "x"),
        "chain_length": len(chain),
        "has_private_key": b"PRIVATE KEY" in tls.private_key.inline_bytes,
    }


def describe_validation_context(context):
    if context.custom_validator_config is not None:
        validator = context.custom_validator_config
        config = validator.typed_config.unpack()
        assert isinstance(config, SpiffeCertValidatorConfig), type(config)
        return {
            "kind": "spiffe_validator",
            "validator_name": validator.name,
            "trust_domains": {
                domain.name: len(certificates(domain.trust_bundle.inline_bytes))
                for domain in config.trust_domains
            },
        }
    return {
        "kind": "trusted_ca",
        "ca_count": len(certificates(context.trusted_ca.inline_bytes)),
    }


def describe(response):
    """Return {secret name: description} for a DiscoveryResponse."""
    secrets = {}
    for resource in response.resources:
        assert resource.type_url == SECRET_TYPE_URL, resource.type_url
        secret = Secret.FromString(resource.value)
        if secret.tls_certificate is not None:
            secrets[secret.name] = describe_tls_certificate(secret.tls_certificate)
        elif secret.validation_context is not None:
            secrets[secret.name] = describe_validation_context(secret.validation_context)
        else:
            secrets[secret.name] = {"kind": "other"}
    return secrets


def summarize(response):
    return {
        "version_info": response.version_info,
        "nonce": response.nonce,
        "type_url": response.type_url,
        "secrets": describe(response),
    }


def stream(stub, channel, names, timeout):
    """Run the StreamSecrets exchange and return the responses before and after the NACK."""
    requests = queue.Queue()
    requests.put(DiscoveryRequest(node=NODE, resource_names=names, type_url=SECRET_TYPE_URL))

    def request_iterator():
        while True:
            request = requests.get()
            if request is None:
                return
            yield request

    # The sync stub has no deadline, so closing the channel ends a stream that stays silent.
    timer = threading.Timer(timeout, channel.close)
    timer.start()
    received = []
    after_nack = []
    try:
        for response in stub.stream_secrets(request_iterator()):
            if len(received) == 2:
                after_nack.append(summarize(response))
                continue
            received.append(summarize(response))
            if len(received) == 1:
                # ACK: repeat the version and nonce of the response.
                requests.put(
                    DiscoveryRequest(
                        node=NODE,
                        version_info=response.version_info,
                        response_nonce=response.nonce,
                        resource_names=names,
                        type_url=SECRET_TYPE_URL,
                    )
                )
                continue
            # NACK: keep the ACKed version, name this nonce and give an error. Then close the
            # request side and collect whatever the agent still sends until it ends the stream.
            requests.put(
                DiscoveryRequest(
                    node=NODE,
                    version_info=received[0]["version_info"],
                    response_nonce=response.nonce,
                    resource_names=names,
                    type_url=SECRET_TYPE_URL,
                    error_detail=Status(code=3, message=NACK_MESSAGE),
                )
            )
            requests.put(None)
            timer.cancel()
            timer = threading.Timer(5, channel.close)
            timer.start()
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.CANCELLED:
            raise
    finally:
        timer.cancel()
        requests.put(None)
    return received, after_nack


def wait_for_socket(socket, timeout):
    """Poll for the agent socket, so that the script can start before the agent binds it."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(socket):
        if time.monotonic() > deadline:
            sys.exit(f"agent socket {socket} did not appear within {timeout} s")
        time.sleep(0.002)


def utc_now():
    """Return the time in the format of the agent's log timestamps (UTC, microseconds)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def bootstrap_sds_names(path):
    """Return the sorted SDS resource names that an Envoy bootstrap file requests."""
    with open(path, encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    return sorted({node["name"] for _, node in walk(document) if "sds_config" in node})


def main():
    socket, summary_path = sys.argv[1], sys.argv[2]
    rotation_timeout, bootstrap = float(sys.argv[3]), sys.argv[4]
    # The caller starts the agent after this line, once the slow imports are done.
    print("ready", flush=True)
    wait_for_socket(socket, 60)
    channel = grpc.insecure_channel("unix:" + socket)
    stub = SecretDiscoveryServiceSyncStub(channel)
    summary = {}

    summary["fetch_sent_at"] = utc_now()
    fetched = stub.fetch_secrets(
        DiscoveryRequest(
            node=NODE, resource_names=["default", "ROOTCA", "ALL"], type_url=SECRET_TYPE_URL
        )
    )
    summary["fetch"] = summarize(fetched)

    names = bootstrap_sds_names(bootstrap)
    fetched = stub.fetch_secrets(
        DiscoveryRequest(node=NODE, resource_names=names, type_url=SECRET_TYPE_URL)
    )
    summary["bootstrap_requested"] = names
    summary["bootstrap_fetch"] = summarize(fetched)

    try:
        responses = stub.delta_secrets(iter([DeltaDiscoveryRequest(node=NODE)]))
        list(itertools.islice(responses, 1))
        summary["delta_status"] = "OK"
    except grpc.RpcError as error:
        summary["delta_status"] = error.code().name

    received, after_nack = stream(stub, channel, ["default", "ROOTCA"], rotation_timeout)
    summary["stream"] = received
    summary["after_nack"] = after_nack
    summary["nack_message"] = NACK_MESSAGE
    channel.close()

    with open(summary_path, "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()

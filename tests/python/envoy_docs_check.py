"""Check Envoy bootstrap files against the Envoy v3 API and against what a twid agent serves.

Usage: envoy_docs_check.py --socket PATH --trust-domain TD --sds-name NAME... FILE...

Each FILE is parsed as YAML and loaded into envoy.config.bootstrap.v3.Bootstrap with the
envoy-data-plane messages, which reject unknown fields, unknown enum values and unregistered
`@type` URLs. Then the checks are:

- every SDS secret names a resource the agent serves: one of the --sds-name values, a SPIFFE ID
  in the trust domain, or the trust domain itself;
- every SDS config source reaches the agent's socket over an HTTP/2 cluster;
- every TLS listener requires client certificates;
- every TLS cluster matches the server's URI SAN against a SPIFFE ID.

Exits 1 with one line per problem.
"""

import argparse
import sys

import yaml

# Importing these modules registers their messages for `@type` URLs in typed_config.
# NOTE: a bootstrap that uses another extension fails as unregistered until it is imported here.
import envoy_data_plane.envoy.extensions.filters.http.router.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.transport_sockets.tls.v3  # noqa: F401
import envoy_data_plane.envoy.extensions.upstreams.http.v3  # noqa: F401
from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

TLS_PREFIX = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."


def walk(node, path=""):
    """Yield (path, dict) for every mapping in a YAML document, depth first."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{path}[{index}]")


def cluster_problems(document, socket):
    """Return the names of clusters on the agent socket, and problems with pipe addresses."""
    problems = []
    agent_clusters = set()
    clusters = document.get("static_resources", {}).get("clusters", [])
    for cluster in clusters:
        pipes = [node["pipe"]["path"] for _, node in walk(cluster) if "pipe" in node]
        for path in pipes:
            if path != socket:
                problems.append(
                    f"cluster {cluster['name']}: pipe path {path} is not the agent socket {socket}"
                )
        if not pipes:
            continue
        options = cluster.get("typed_extension_protocol_options", {})
        http2 = any(
            "http2_protocol_options" in option.get("explicit_http_config", {})
            for option in options.values()
        )
        if not http2:
            problems.append(
                f"cluster {cluster['name']}: the agent serves gRPC, but the cluster does not "
                "set explicit_http_config.http2_protocol_options"
            )
        agent_clusters.add(cluster["name"])
    return agent_clusters, problems


def served(name, sds_names, trust_domain):
    """Return whether the agent serves an SDS resource of this name."""
    return (
        name in sds_names
        or name == trust_domain
        or name.startswith(f"spiffe://{trust_domain}/")
    )


def sds_problems(document, agent_clusters, sds_names, trust_domain):
    """Return problems with SDS secret configs, and the number of secret configs seen."""
    problems = []
    count = 0
    for path, node in walk(document):
        if "sds_config" not in node:
            continue
        count += 1
        name = node.get("name", "")
        if not served(name, sds_names, trust_domain):
            problems.append(f"{path}: SDS resource {name!r} is not served by the agent")
        source = node["sds_config"]
        if source.get("resource_api_version") != "V3":
            problems.append(f"{path}: sds_config.resource_api_version is not V3")
        api = source.get("api_config_source", {})
        if api.get("api_type") != "GRPC" or api.get("transport_api_version") != "V3":
            problems.append(f"{path}: sds_config is not a V3 GRPC api_config_source")
        services = api.get("grpc_services", [])
        targets = [service.get("envoy_grpc", {}).get("cluster_name") for service in services]
        if not targets or any(target not in agent_clusters for target in targets):
            problems.append(f"{path}: sds_config clusters {targets} are not on the agent socket")
    return count, problems


def tls_problems(document):
    """Return problems with TLS contexts: client certificates and server SAN checks."""
    problems = []
    downstream = upstream = 0
    for path, node in walk(document):
        kind = node.get("@type", "")
        if kind == TLS_PREFIX + "DownstreamTlsContext":
            downstream += 1
            if node.get("require_client_certificate") is not True:
                problems.append(f"{path}: DownstreamTlsContext does not require client certificates")
        elif kind == TLS_PREFIX + "UpstreamTlsContext":
            upstream += 1
            combined = node.get("common_tls_context", {}).get("combined_validation_context", {})
            matchers = combined.get("default_validation_context", {}).get(
                "match_typed_subject_alt_names", []
            )
            spiffe_ids = [
                matcher["matcher"].get("exact", "")
                for matcher in matchers
                if matcher.get("san_type") == "URI"
            ]
            if not any(value.startswith("spiffe://") for value in spiffe_ids):
                problems.append(
                    f"{path}: UpstreamTlsContext does not match the server's URI SAN exactly "
                    "against a SPIFFE ID"
                )
    if downstream == 0:
        problems.append("no listener has a DownstreamTlsContext")
    if upstream == 0:
        problems.append("no cluster has an UpstreamTlsContext")
    return problems


def check(file, socket, sds_names, trust_domain):
    """Return the problems of one bootstrap file."""
    with open(file, encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    try:
        Bootstrap.from_dict(document)
    except (KeyError, TypeError, ValueError) as error:
        return [f"not a valid Envoy v3 bootstrap: {type(error).__name__}: {error}"]
    agent_clusters, problems = cluster_problems(document, socket)
    if not agent_clusters:
        problems.append(f"no cluster has the agent socket {socket} as its pipe address")
    count, found = sds_problems(document, agent_clusters, sds_names, trust_domain)
    problems += found
    if count == 0:
        problems.append("no SDS secret config found")
    problems += tls_problems(document)
    return problems


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--trust-domain", required=True)
    parser.add_argument("--sds-name", action="append", required=True)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    failed = False
    for file in args.files:
        problems = check(file, args.socket, set(args.sds_name), args.trust_domain)
        for problem in problems:
            print(f"{file}: {problem}")
        failed = failed or bool(problems)
        if not problems:
            print(f"{file}: ok")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

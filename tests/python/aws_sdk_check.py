"""Resolves AWS credentials with boto3 from twid's outputs and prints the caller identity.

Usage: aws_sdk_check.py PROFILE_OR_DASH STS_ENDPOINT

With a profile name, boto3 reads AWS_CONFIG_FILE, whose profile runs `twid aws credentials`
as its credential_process. With "-", boto3 reads AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN
and calls AssumeRoleWithWebIdentity itself. Either way, GetCallerIdentity goes to
STS_ENDPOINT, and the printed JSON has the Arn and Account that STS returned.
"""

import json
import sys

import boto3


def main() -> None:
    profile, endpoint = sys.argv[1], sys.argv[2]
    session = boto3.Session(
        profile_name=None if profile == "-" else profile, region_name="us-east-1"
    )
    credentials = session.get_credentials()
    if credentials is None:
        sys.exit("boto3 found no credentials")
    identity = session.client("sts", endpoint_url=endpoint).get_caller_identity()
    print(
        json.dumps(
            {
                "arn": identity["Arn"],
                "account": identity["Account"],
                "method": credentials.method,
            }
        )
    )


if __name__ == "__main__":
    main()

"""S3 clients and buckets on the moto server of the tests (docs/testing.md); the
server itself is :func:`support.server.moto_s3_server`."""

from __future__ import annotations

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
          "AWS_DEFAULT_REGION": "us-east-1"}


def s3_client(endpoint: str):
    """A plain boto3 S3 client for ``endpoint`` (to create buckets, count objects,
    corrupt them)."""
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")


def new_bucket(endpoint: str) -> str:
    """Create a bucket with a unique name on ``endpoint``; return its name."""
    import uuid

    name = f"tvcfs-{uuid.uuid4().hex[:20]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def bucket_objects(endpoint: str, bucket: str, prefix: str = "") -> dict:
    """``{key: size in bytes}`` of every object in ``bucket`` under ``prefix``."""
    c, out, token = s3_client(endpoint), {}, None
    while True:
        page = c.list_objects_v2(Bucket=bucket, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", ())})
        if not page.get("IsTruncated"):
            return out
        token = page["NextContinuationToken"]

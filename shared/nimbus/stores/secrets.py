"""Secrets kept in AWS: an SSM parameter or a Secrets Manager secret, read as text.

Locally the same calls go to the S3 emulator's endpoint (moto serves both APIs).
"""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from nimbus.config import Settings
from nimbus.errors import ConfigError, StoreUnavailable
from nimbus.stores.objects import aws_client

SSM, SECRETS_MANAGER = "ssm:", "secretsmanager:"


def read_secret(settings: Settings, source: str) -> str:
    """The text at ``ssm:/name`` (decrypted) or ``secretsmanager:id``; a missing one is a ConfigError."""
    service = "ssm" if source.startswith(SSM) else "secretsmanager" if source.startswith(SECRETS_MANAGER) else None
    if service is None:
        raise ConfigError(f"secret source {source!r} must start with {SSM} or {SECRETS_MANAGER}")
    name = source.split(":", 1)[1]
    client = aws_client(service, settings)
    try:
        if service == "ssm":
            return client.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
        return client.get_secret_value(SecretId=name)["SecretString"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ParameterNotFound", "ResourceNotFoundException"):
            raise ConfigError(f"secret {source} does not exist") from exc
        raise StoreUnavailable(service, settings.aws_endpoint_url or "aws", code or "error") from exc
    except BotoCoreError as exc:
        raise StoreUnavailable(service, settings.aws_endpoint_url or "aws", type(exc).__name__) from exc

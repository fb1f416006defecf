"""The local stack: real servers on loopback without Docker, and a Lambda-like runner.

``stack`` starts and stops Redis, a MongoDB-wire server, the S3/SQS emulator and MLflow;
``serverless`` reads serverless.yml; ``invoke`` calls a handler like ``sls invoke local``;
``gateway`` routes HTTP, schedules and drop-folder notifications to the handlers.
"""

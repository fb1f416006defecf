"""batch: a file in the S3 drop folder, or a schedule -> Spark batch predictions."""

from nimbus.batch.trigger import handle
from nimbus.buffers import flushed
from nimbus.config import get_settings
from nimbus.events import parse


@flushed  # anything buffered (traffic, samples) is written before the handler returns
def handler(event, context):
    return {"runs": handle(parse(event), get_settings())}

import json


def handler(event, context):
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps({"event": event, "function": context.function_name,
                                "remaining_ms": context.get_remaining_time_in_millis()})}

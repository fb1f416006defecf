import time


def handler(event, context):
    time.sleep(3)
    return {"statusCode": 200, "body": "too late"}

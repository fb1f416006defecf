def handler(event, context):
    raise ValueError("internal detail that must not reach the client")

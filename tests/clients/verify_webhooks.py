"""Verifies relayed webhooks with the Python `standardwebhooks` library.

Reads {"secret": ..., "webhooks": [{"headers": {...}, "body": "..."}]} on stdin and
prints one JSON line: how many verified, and the error for each that did not.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook

given = json.load(sys.stdin)
webhook = Webhook(given["secret"])
verified, errors = 0, []
for message in given["webhooks"]:
    try:
        webhook.verify(message["body"], message["headers"])
        verified += 1
    except Exception as error:  # the library raises its own WebhookVerificationError
        errors.append(f"{type(error).__name__}: {error}")
print(json.dumps({"verified": verified, "errors": errors}))

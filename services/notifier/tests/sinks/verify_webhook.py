#!/usr/bin/env python3
"""Verifies one captured webhook with the standardwebhooks package (an
implementation independent of berth's): argv = secret, then the captured
record as JSON on stdin. Exits 0 when the signature verifies."""
import json, sys
from standardwebhooks.webhooks import Webhook

rec = json.load(sys.stdin)
Webhook(sys.argv[1]).verify(rec["body"], rec["headers"])
print("verified")

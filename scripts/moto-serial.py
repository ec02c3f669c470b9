"""moto server whose DynamoDB takes one request at a time.

moto's DynamoDB applies a transaction by snapshotting the table, writing item by item and, if
a condition fails, putting the snapshot back, with no lock: a transaction that failed in one
thread can erase one that committed in another meanwhile. DynamoDB requests are served one at
a time, so every transaction is atomic and isolated, as DynamoDB's are. Other services stay
threaded: an SQS long poll sleeps in its handler and must not hold up everyone else.
Same arguments as moto_server.
"""

import sys
import threading

import moto.server
from werkzeug import serving

DYNAMODB = threading.Lock()


def one_dynamodb_request_at_a_time(app):
    def serve(environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
            with DYNAMODB:
                # The body is built inside the lock: moto answers with a list, not a stream.
                return list(app(environ, start_response))
        return app(environ, start_response)

    return serve


def run_with_serial_dynamodb(hostname, port, application, *args, **kwargs):
    return serving.run_simple(
        hostname, port, one_dynamodb_request_at_a_time(application), *args, **kwargs
    )


moto.server.run_simple = run_with_serial_dynamodb

if __name__ == "__main__":
    moto.server.main(sys.argv[1:])

"""moto server, taking one request at a time.

moto's DynamoDB applies a transaction by snapshotting the table, writing item by item and, if
a condition fails, putting the snapshot back, with no lock: a transaction that failed in one
thread can erase one that committed in another meanwhile. Served one request at a time, every
transaction is atomic and isolated, as DynamoDB's are. Same arguments as moto_server.
"""

import sys

import moto.server
from werkzeug import serving


def run_serially(*args, **kwargs):
    kwargs["threaded"] = False
    return serving.run_simple(*args, **kwargs)


moto.server.run_simple = run_serially

if __name__ == "__main__":
    moto.server.main(sys.argv[1:])

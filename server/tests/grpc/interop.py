"""The gRPC service from another ecosystem: Python `grpcio` with stubs `grpc_tools.protoc`
generates here from proto/lattice/v1/documents.proto. Run by server/tests/grpc.rs against a
live server; every check raises on failure, and each step prints one line the test asserts.

Environment: LATTICE_GRPC_ADDR (host:port), LATTICE_PROTO_DIR (the folder holding lattice/),
LATTICE_STUB_DIR (where to write the stubs), LATTICE_WRITER / LATTICE_READER (tokens),
LATTICE_DOC, LATTICE_UPDATE_1 / LATTICE_UPDATE_2 (Yjs updates, hex).
"""

import os
import sys
import threading

from grpc_tools import protoc

env = os.environ
stubs = env["LATTICE_STUB_DIR"]
proto_dir = env["LATTICE_PROTO_DIR"]
status = protoc.main(
    [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"--python_out={stubs}",
        f"--grpc_python_out={stubs}",
        os.path.join(proto_dir, "lattice/v1/documents.proto"),
    ]
)
assert status == 0, f"grpc_tools.protoc failed with {status}"
sys.path.insert(0, stubs)

import grpc  # noqa: E402
from lattice.v1 import documents_pb2 as pb  # noqa: E402
from lattice.v1 import documents_pb2_grpc as rpc  # noqa: E402

doc = env["LATTICE_DOC"]
update_1 = bytes.fromhex(env["LATTICE_UPDATE_1"])
update_2 = bytes.fromhex(env["LATTICE_UPDATE_2"])


def auth(token):
    return (("authorization", f"Bearer {token}"),)


writer, reader = auth(env["LATTICE_WRITER"]), auth(env["LATTICE_READER"])
channel = grpc.insecure_channel(env["LATTICE_GRPC_ADDR"])
grpc.channel_ready_future(channel).result(timeout=10)
documents = rpc.DocumentsStub(channel)

applied = documents.ApplyUpdate(
    pb.ApplyUpdateRequest(doc=doc, yjs_update=update_1, idempotency_key="py-1"),
    metadata=writer,
    timeout=10,
)
assert applied.seq == 1 and applied.changed and not applied.replayed, applied
again = documents.ApplyUpdate(
    pb.ApplyUpdateRequest(doc=doc, yjs_update=update_1, idempotency_key="py-1"),
    metadata=writer,
    timeout=10,
)
assert again.seq == 1 and again.replayed, again
print(f"applied seq={applied.seq} replayed={again.replayed}", flush=True)

got = documents.GetDocument(pb.GetDocumentRequest(doc=doc), metadata=reader, timeout=10)
assert got.seq == 1, got
assert "hello" in got.json and len(got.yjs_update) > 2, got
print(f"got seq={got.seq} json={got.json}", flush=True)

# A stream from the start of the log, then a live entry written while it is open.
stream = documents.Subscribe(
    pb.SubscribeRequest(doc=doc, after_seq=0), metadata=reader, timeout=20
)
events = []
first = threading.Event()


def read():
    for event in stream:
        events.append(event)
        first.set()
        if event.seq == 2:
            return


reading = threading.Thread(target=read)
reading.start()
assert first.wait(10), "no event on the stream"
live = documents.ApplyUpdate(
    pb.ApplyUpdateRequest(doc=doc, yjs_update=update_2), metadata=writer, timeout=10
)
assert live.seq == 2, live
reading.join(10)
assert not reading.is_alive(), "the live entry did not arrive"
stream.cancel()
kinds = [pb.DocumentEvent.Kind.Name(e.kind) for e in events]
assert [e.seq for e in events] == [1, 2] and kinds == ["ENTRY", "ENTRY"], events
assert all(len(e.yjs_update) > 2 and len(e.frame) > 0 for e in events), events
print(f"subscribed seqs={[e.seq for e in events]} kinds={kinds}", flush=True)

# Refusals: a reader may not write, and no token is no call.
for metadata, expected in ((reader, grpc.StatusCode.PERMISSION_DENIED), ((), grpc.StatusCode.UNAUTHENTICATED)):
    try:
        documents.ApplyUpdate(
            pb.ApplyUpdateRequest(doc=doc, yjs_update=update_2), metadata=metadata, timeout=10
        )
    except grpc.RpcError as e:
        assert e.code() == expected, (e.code(), e.details())
        error = dict(e.trailing_metadata() or ()).get("lattice-error")
        print(f"refused {e.code().name} lattice-error={error}", flush=True)
    else:
        raise AssertionError(f"the write was not refused ({expected})")
print("python interop ok", flush=True)

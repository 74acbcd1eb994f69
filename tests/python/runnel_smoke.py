"""Any-language check: a Python client generated from proto/ with grpcio-tools
talks to a running broker with nothing but the generated code.

Usage: runnel_smoke.py ADDR TOPIC   (generated modules on sys.path)

Creates TOPIC with 2 partitions, produces a record list (no pre-encoded
batch) to partition 1 and keyed records to the broker's partitioner, fetches
them back decoded, lists offsets, checks an error's reason trailer and lists
services by reflection, and is a consumer group member with the generated
GroupService stub alone (join, fetch committed offsets, read, commit,
heartbeat, leave). Raises (exit status 1) on the first mismatch; on
success prints one JSON object for the Rust test to check further.
"""

import json
import sys
import time

import grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from runnel.v1 import admin_pb2, admin_pb2_grpc
from runnel.v1 import common_pb2
from runnel.v1 import fetch_pb2, fetch_pb2_grpc
from runnel.v1 import group_pb2, group_pb2_grpc
from runnel.v1 import produce_pb2, produce_pb2_grpc

# An hour ago, on a whole second: recent enough that the default retention
# (7 days) keeps the records, old enough to be unlike the broker's clock.
T0 = (int(time.time()) - 3600) * 1000
TIMEOUT = 30


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def fetch_all(fetch, topic, partition):
    """Every committed record of a partition: fetch until the high watermark."""
    out, offset = [], 0
    while True:
        data = fetch.Fetch(
            fetch_pb2.FetchRequest(
                topic=topic,
                partitions=[fetch_pb2.PartitionFetch(partition=partition, offset=offset)],
                decode=True,
            ),
            timeout=TIMEOUT,
        ).partitions[0]
        expect(not data.HasField("error"), f"fetch error: {data}")
        out.extend(data.records)
        if data.next_offset >= data.high_watermark:
            return out
        expect(data.next_offset > offset, f"fetch did not advance from {offset}: {data}")
        offset = data.next_offset


def main():
    addr, topic = sys.argv[1], sys.argv[2]
    channel = grpc.insecure_channel(addr)
    grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    produce = produce_pb2_grpc.ProduceServiceStub(channel)
    fetch = fetch_pb2_grpc.FetchServiceStub(channel)

    created = admin.CreateTopic(
        admin_pb2.CreateTopicRequest(
            name=topic, config=admin_pb2.TopicConfig(partitions=2)
        ),
        timeout=TIMEOUT,
    )
    expect(created.topic.name == topic, f"created {created}")
    expect(len(created.topic.partitions) == 2, f"two partitions: {created}")

    # A plain record list to partition 1.
    records = [
        common_pb2.Record(
            key=f"k{i}".encode(),
            value=f"py-{i}".encode(),
            headers=[common_pb2.Header(key="lang", value=b"python")],
            timestamp_ms=T0 + i * 1000,
        )
        for i in range(10)
    ]
    resp = produce.Produce(
        produce_pb2.ProduceRequest(
            topic=topic,
            partitions=[
                produce_pb2.PartitionRecords(
                    partition=1, records=produce_pb2.RecordList(records=records)
                )
            ],
            acks=common_pb2.ACKS_ALL,
        ),
        timeout=TIMEOUT,
    )
    expect(len(resp.results) == 1, f"one result: {resp}")
    result = resp.results[0]
    expect(not result.HasField("error"), f"produce error: {resp}")
    expect(result.partition == 1 and result.record_count == 10, f"{resp}")
    expect(result.HasField("base_offset"), f"acks=all gives a base offset: {resp}")
    base = result.base_offset

    fetched = fetch.Fetch(
        fetch_pb2.FetchRequest(
            topic=topic,
            partitions=[fetch_pb2.PartitionFetch(partition=1, offset=base)],
            decode=True,
        ),
        timeout=TIMEOUT,
    )
    part = fetched.partitions[0]
    expect(not part.HasField("error"), f"fetch error: {part}")
    got = [(r.offset, r.key, r.value, r.timestamp_ms, [(h.key, h.value) for h in r.headers])
           for r in part.records]
    want = [(base + i, f"k{i}".encode(), f"py-{i}".encode(), T0 + i * 1000, [("lang", b"python")])
            for i in range(10)]
    expect(got == want, f"fetched {got}, want {want}")
    expect(part.high_watermark == base + 10, f"high watermark {part.high_watermark}")

    # Keyed records with no partition: the broker's partitioner places them.
    keyed = [common_pb2.Record(key=f"user-{i}".encode(), value=b"x") for i in range(20)]
    resp = produce.Produce(
        produce_pb2.ProduceRequest(
            topic=topic,
            partitions=[produce_pb2.PartitionRecords(records=produce_pb2.RecordList(records=keyed))],
        ),
        timeout=TIMEOUT,
    )
    expect(sum(r.record_count for r in resp.results) == 20, f"{resp}")
    placed = {}
    for p in (0, 1):
        for r in fetch_all(fetch, topic, p):
            if r.key.startswith(b"user-"):
                placed[r.key.decode()] = p
    expect(len(placed) == 20, f"keyed records found: {placed}")

    def list_offset(query):
        resp = fetch.ListOffsets(
            fetch_pb2.ListOffsetsRequest(topic=topic, queries=[query]), timeout=TIMEOUT
        )
        o = resp.offsets[0]
        expect(not o.HasField("error"), f"list offsets error: {o}")
        return o

    earliest = list_offset(fetch_pb2.OffsetQuery(partition=1, spec=fetch_pb2.OFFSET_SPEC_EARLIEST))
    latest = list_offset(fetch_pb2.OffsetQuery(partition=1, spec=fetch_pb2.OFFSET_SPEC_LATEST))
    by_time = list_offset(fetch_pb2.OffsetQuery(partition=1, timestamp_ms=T0 + 4500))
    expect(earliest.offset == 0, f"earliest {earliest}")
    expect(latest.offset >= base + 10, f"latest {latest}")
    expect(by_time.offset == base + 5, f"by time {by_time}")
    expect(by_time.timestamp_ms == T0 + 5000, f"by time {by_time}")

    # A failed call carries the machine-readable reason as a trailer.
    try:
        fetch.Fetch(
            fetch_pb2.FetchRequest(topic="no-such-topic", partitions=[fetch_pb2.PartitionFetch()]),
            timeout=TIMEOUT,
        )
        raise AssertionError("fetch of a missing topic succeeded")
    except grpc.RpcError as e:
        expect(e.code() == grpc.StatusCode.NOT_FOUND, f"code {e.code()}")
        trailers = dict(e.trailing_metadata() or ())
        expect(trailers.get("runnel-reason") == "UNKNOWN_TOPIC", f"trailers {trailers}")

    # Reflection, as grpcurl uses it: list services, resolve a method.
    db = ProtoReflectionDescriptorDatabase(channel)
    services = sorted(db.get_services())
    pool = descriptor_pool.DescriptorPool(db)
    method = pool.FindMethodByName("runnel.v1.ProduceService.ProduceStream")
    expect(method.client_streaming and method.server_streaming, "ProduceStream is bidi")
    expect(method.input_type.full_name == "runnel.v1.ProduceStreamRequest", method.input_type.full_name)

    # A consumer group member with nothing but GroupService and Fetch.
    groups = group_pb2_grpc.GroupServiceStub(channel)
    group = "py-group"
    joined = groups.Heartbeat(
        group_pb2.HeartbeatRequest(
            group=group, member_epoch=0, subscribed_topics=[topic], session_timeout_ms=10000
        ),
        timeout=TIMEOUT,
    )
    expect(joined.member_id and joined.member_epoch > 0, f"joined {joined}")
    assigned = sorted((t.topic, p) for t in joined.assignment for p in t.partitions)
    expect(assigned == [(topic, 0), (topic, 1)], f"sole member gets everything: {joined}")
    none = groups.FetchOffsets(group_pb2.FetchOffsetsRequest(group=group), timeout=TIMEOUT)
    expect(len(none.offsets) == 0, f"a new group has no offsets: {none}")
    # No commit: start from the earliest offset (the reset policy).
    read = fetch_all(fetch, topic, 1)
    position = read[-1].offset + 1
    groups.CommitOffsets(
        group_pb2.CommitOffsetsRequest(
            group=group,
            member_id=joined.member_id,
            member_epoch=joined.member_epoch,
            offsets=[group_pb2.OffsetCommit(topic=topic, partition=1, offset=position)],
        ),
        timeout=TIMEOUT,
    )
    beat = groups.Heartbeat(
        group_pb2.HeartbeatRequest(
            group=group,
            member_id=joined.member_id,
            member_epoch=joined.member_epoch,
            owned=joined.assignment,
            session_timeout_ms=10000,
        ),
        timeout=TIMEOUT,
    )
    expect(beat.member_epoch >= joined.member_epoch, f"heartbeat {beat}")
    try:
        groups.CommitOffsets(
            group_pb2.CommitOffsetsRequest(
                group=group,
                member_id="not-a-member",
                member_epoch=beat.member_epoch,
                offsets=[group_pb2.OffsetCommit(topic=topic, partition=1, offset=0)],
            ),
            timeout=TIMEOUT,
        )
        raise AssertionError("a commit from a stranger succeeded")
    except grpc.RpcError as e:
        trailers = dict(e.trailing_metadata() or ())
        expect(trailers.get("runnel-reason") == "UNKNOWN_MEMBER", f"trailers {trailers}")
    left = groups.Heartbeat(
        group_pb2.HeartbeatRequest(group=group, member_id=joined.member_id, member_epoch=-1),
        timeout=TIMEOUT,
    )
    expect(left.member_epoch == -1, f"left {left}")
    described = groups.DescribeGroup(group_pb2.DescribeGroupRequest(group=group), timeout=TIMEOUT)
    expect(described.state == "Empty" and not described.members, f"{described}")

    print(json.dumps({
        "group_committed": position,
        "base_offset": base,
        "high_watermark": latest.offset,
        "placed": placed,
        "services": services,
    }))


if __name__ == "__main__":
    main()

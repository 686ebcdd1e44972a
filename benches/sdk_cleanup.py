#!/usr/bin/env python3
"""The cleanup script a user would write instead of ecs-janitor, on Alibaba's official Python SDK
(aliyun-python-sdk-ecs with aliyun-python-sdk-core), for the side-by-side benchmark
benches/vs_sdk.rs.

    sdk_cleanup.py ENDPOINT ACCESS_KEY_ID ACCESS_KEY_SECRET JOB_JSON

JOB_JSON lists the policies: [{"regions": [...], "status": "Stopped"|null,
"charge_type": "PostPaid"|"PrePaid"|null, "tags": {"k": "v"}, "expired_days": N|null}, ...].
For each policy and region it lists the matching instances with the same server-side filters
ecs-janitor can use (Status, InstanceChargeType, Tag.N), 100 per page in NextToken order, keeps
those that are not deletion-protected nor tagged janitor:protect=true (and, with expired_days,
whose ExpiredTime is that many days past), then releases them with DeleteInstances in batches of
100, one call at a time, as a careful script would. ENDPOINT is host:port over plain http.

Prints one JSON line: {"seconds": wall time of the work (imports excluded), "calls": ECS calls,
"released": instances released}.
"""

import datetime
import json
import sys
import time
import uuid


def parse_time(s):
    if not s:
        return None
    for fmt in ("%Y-%m-%dT%H:%MZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.datetime.strptime(s, fmt).replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            pass
    return None


def main():
    endpoint, ak, secret, job_json = sys.argv[1:5]
    try:
        from aliyunsdkcore.client import AcsClient
        from aliyunsdkecs.request.v20140526 import (
            DeleteInstancesRequest,
            DescribeInstancesRequest,
        )
    except ImportError as e:
        print("SDK not installed: %s" % e, file=sys.stderr)
        sys.exit(3)
    policies = json.loads(job_json)
    clients = {}
    calls = 0

    def send(region, req):
        nonlocal calls
        if region not in clients:
            clients[region] = AcsClient(ak, secret, region, auto_retry=False)
        req.set_endpoint(endpoint)
        req.set_protocol_type("http")
        req.set_accept_format("JSON")
        calls += 1
        return json.loads(clients[region].do_action_with_exception(req))

    start = time.monotonic()
    now = datetime.datetime.now(datetime.timezone.utc)
    released = set()
    for p in policies:
        for region in p["regions"]:
            chosen = []
            token = None
            while True:
                req = DescribeInstancesRequest.DescribeInstancesRequest()
                req.set_MaxResults(100)
                if token:
                    req.set_NextToken(token)
                if p.get("status"):
                    req.set_Status(p["status"])
                if p.get("charge_type"):
                    req.set_InstanceChargeType(p["charge_type"])
                if p.get("tags"):
                    req.set_Tags([{"Key": k, "Value": v} for k, v in sorted(p["tags"].items())])
                body = send(region, req)
                for i in body["Instances"]["Instance"]:
                    tags = {t["TagKey"]: t["TagValue"] for t in i.get("Tags", {}).get("Tag", [])}
                    if i.get("DeletionProtection") or tags.get("janitor:protect") == "true":
                        continue
                    if i.get("OperationLocks", {}).get("LockReason"):
                        continue
                    if p.get("expired_days") is not None:
                        expired = parse_time(i.get("ExpiredTime"))
                        if expired is None or now - expired < datetime.timedelta(days=p["expired_days"]):
                            continue
                    if i["InstanceId"] not in released:
                        chosen.append(i["InstanceId"])
                token = body.get("NextToken")
                if not token:
                    break
            for k in range(0, len(chosen), 100):
                batch = chosen[k:k + 100]
                req = DeleteInstancesRequest.DeleteInstancesRequest()
                req.set_InstanceIds(batch)
                req.set_ClientToken(str(uuid.uuid4()))
                req.set_Force(False)
                if p.get("charge_type") == "PrePaid":
                    req.set_TerminateSubscription(True)
                send(region, req)
                released.update(batch)
    print(json.dumps({"seconds": time.monotonic() - start, "calls": calls, "released": len(released)}))


if __name__ == "__main__":
    main()

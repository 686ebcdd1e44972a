#!/usr/bin/env python3
"""Drives an ECS endpoint (the simulator) with one of Alibaba's official Python SDKs.

    drive_ecs.py new|old ENDPOINT REGION ACCESS_KEY_ID ACCESS_KEY_SECRET DELETE_ID CLIENT_TOKEN \
        [RENEW_ID DISKS_OF]

`new` is alibabacloud-ecs20140526 (signature V3), `old` is aliyun-python-sdk-ecs with
aliyun-python-sdk-core (signature V1). ENDPOINT is host:port, spoken over plain http.

Runs the same scenario with either: pages through the Stopped instances tagged purpose=ci with
MaxResults=10 and NextToken; a DryRun DescribeInstances; DeleteInstances of DELETE_ID with
CLIENT_TOKEN, then its replay; and a DescribeInstances signed with a wrong secret. With RENEW_ID
and DISKS_OF it also reads what savings need: DescribePrice of ecs.g6.large (an hour),
DescribeRenewalPrice of the subscription RENEW_ID, and DescribeDisks of the instance DISKS_OF.
Prints one
JSON document with what it saw, for the test to check. Exit 3 when the SDK is not installed.
"""

import json
import sys


def error_code(e):
    # Both SDKs' exceptions carry the ECS error code, under different names.
    for attr in ("code", "error_code"):
        v = getattr(e, attr, None)
        if callable(v):
            v = v()
        if v:
            return str(v)
    if hasattr(e, "get_error_code"):
        return e.get_error_code()
    return "unexpected:%s:%s" % (type(e).__name__, e)


class NewSdk:
    def __init__(self, endpoint, region, ak, secret):
        from alibabacloud_tea_openapi import models as open_api_models
        from alibabacloud_ecs20140526.client import Client
        from alibabacloud_ecs20140526 import models

        self.models = models
        self.region = region
        config = open_api_models.Config(
            access_key_id=ak,
            access_key_secret=secret,
            endpoint=endpoint,
            protocol="http",
            region_id=region,
        )
        self.client = Client(config)

    def describe(self, next_token=None, dry_run=False):
        m = self.models
        req = m.DescribeInstancesRequest(
            region_id=self.region,
            max_results=10,
            next_token=next_token,
            status="Stopped",
            tag=[m.DescribeInstancesRequestTag(key="purpose", value="ci")],
            dry_run=dry_run or None,
        )
        body = self.client.describe_instances(req).body
        ids = [i.instance_id for i in body.instances.instance]
        return ids, body.next_token

    def delete(self, instance_id, token):
        req = self.models.DeleteInstancesRequest(
            region_id=self.region,
            instance_id=[instance_id],
            client_token=token,
            force=False,
        )
        return self.client.delete_instances(req).body.request_id

    def price(self, instance_type):
        req = self.models.DescribePriceRequest(
            region_id=self.region,
            resource_type="instance",
            instance_type=instance_type,
            price_unit="Hour",
        )
        p = self.client.describe_price(req).body.price_info.price
        details = {d.resource: d.original_price for d in p.detail_infos.detail_info}
        return {"currency": p.currency, "original": p.original_price, "details": details}

    def renewal(self, instance_id):
        req = self.models.DescribeRenewalPriceRequest(
            region_id=self.region, resource_id=instance_id, resource_type="instance"
        )
        p = self.client.describe_renewal_price(req).body.price_info.price
        return {"currency": p.currency, "original": p.original_price}

    def disks(self, instance_id):
        req = self.models.DescribeDisksRequest(
            region_id=self.region, instance_id=instance_id, max_results=100
        )
        body = self.client.describe_disks(req).body
        return [
            {
                "id": d.disk_id,
                "type": d.type,
                "category": d.category,
                "size": d.size,
                "delete_with_instance": d.delete_with_instance,
            }
            for d in body.disks.disk
        ]


class OldSdk:
    def __init__(self, endpoint, region, ak, secret):
        from aliyunsdkcore.client import AcsClient
        from aliyunsdkecs.request.v20140526 import (
            DeleteInstancesRequest,
            DescribeInstancesRequest,
        )

        self.endpoint = endpoint
        self.mods = (DescribeInstancesRequest, DeleteInstancesRequest)
        self.region = region
        self.client = AcsClient(ak, secret, region, auto_retry=False)

    def _send(self, req):
        req.set_endpoint(self.endpoint)
        req.set_protocol_type("http")
        req.set_accept_format("JSON")
        return json.loads(self.client.do_action_with_exception(req))

    def describe(self, next_token=None, dry_run=False):
        req = self.mods[0].DescribeInstancesRequest()
        req.set_MaxResults(10)
        if next_token:
            req.set_NextToken(next_token)
        req.set_Status("Stopped")
        req.set_Tags([{"Key": "purpose", "Value": "ci"}])
        if dry_run:
            req.set_DryRun(True)
        body = self._send(req)
        ids = [i["InstanceId"] for i in body["Instances"]["Instance"]]
        return ids, body.get("NextToken")

    def delete(self, instance_id, token):
        req = self.mods[1].DeleteInstancesRequest()
        req.set_InstanceIds([instance_id])
        req.set_ClientToken(token)
        req.set_Force(False)
        return self._send(req)["RequestId"]

    def price(self, instance_type):
        from aliyunsdkecs.request.v20140526.DescribePriceRequest import DescribePriceRequest

        req = DescribePriceRequest()
        req.set_ResourceType("instance")
        req.set_InstanceType(instance_type)
        req.set_PriceUnit("Hour")
        p = self._send(req)["PriceInfo"]["Price"]
        details = {d["Resource"]: d["OriginalPrice"] for d in p["DetailInfos"]["DetailInfo"]}
        return {"currency": p["Currency"], "original": p["OriginalPrice"], "details": details}

    def renewal(self, instance_id):
        from aliyunsdkecs.request.v20140526.DescribeRenewalPriceRequest import (
            DescribeRenewalPriceRequest,
        )

        req = DescribeRenewalPriceRequest()
        req.set_ResourceId(instance_id)
        req.set_ResourceType("instance")
        p = self._send(req)["PriceInfo"]["Price"]
        return {"currency": p["Currency"], "original": p["OriginalPrice"]}

    def disks(self, instance_id):
        from aliyunsdkecs.request.v20140526.DescribeDisksRequest import DescribeDisksRequest

        req = DescribeDisksRequest()
        req.set_InstanceId(instance_id)
        req.set_MaxResults(100)
        body = self._send(req)
        return [
            {
                "id": d["DiskId"],
                "type": d["Type"],
                "category": d["Category"],
                "size": d["Size"],
                "delete_with_instance": d["DeleteWithInstance"],
            }
            for d in body["Disks"]["Disk"]
        ]


def main():
    kind, endpoint, region, ak, secret, delete_id, token = sys.argv[1:8]
    cls = NewSdk if kind == "new" else OldSdk
    try:
        sdk = cls(endpoint, region, ak, secret)
    except ImportError as e:
        print("SDK not installed: %s" % e, file=sys.stderr)
        sys.exit(3)
    out = {"pages": 0, "paged": []}
    next_token = None
    while True:
        ids, next_token = sdk.describe(next_token)
        out["pages"] += 1
        out["paged"].extend(ids)
        if not next_token or out["pages"] > 50:
            break
    try:
        sdk.describe(dry_run=True)
        out["dry_run"] = "no error"
    except Exception as e:  # noqa: BLE001 - the code is what is checked
        out["dry_run"] = error_code(e)
    out["delete"] = sdk.delete(delete_id, token)
    out["replay"] = sdk.delete(delete_id, token)
    try:
        cls(endpoint, region, ak, secret + "-wrong").describe()
        out["wrong_secret"] = "no error"
    except Exception as e:  # noqa: BLE001
        out["wrong_secret"] = error_code(e)
    if len(sys.argv) > 9:
        renew_id, disks_of = sys.argv[8:10]
        out["price"] = sdk.price("ecs.g6.large")
        out["renewal"] = sdk.renewal(renew_id)
        out["disks"] = sdk.disks(disks_of)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

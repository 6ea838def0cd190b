#!/usr/bin/env python3
"""A steady, bounded stream of AdmissionReviews to the webhook, for scripts/reliability.sh.

Every ~100 ms: GET /readyz, then POST one review of an existing snapshot (snap-ok) and one of a
snapshot that never exists (snap-missing). Writes one JSON line per round to OUT:
{"t": unix time, "ready": HTTP code or 0, "ok": "allowed"|"denied"|"error:...", "missing": ...,
 "ok_warn": [...], "missing_msg": "..."}. Stops when STOP_FILE exists or after MAX_SECONDS.
"""
import json, os, ssl, sys, time, urllib.request, urllib.error

url, ops, ns, out, stop_file, max_seconds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE


def review(uid, snapshot):
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "longhorn.io", "version": "v1beta2", "kind": "Backup"},
            "resource": {"group": "longhorn.io", "version": "v1beta2", "resource": "backups"},
            "namespace": ns, "operation": "CREATE",
            "userInfo": {"username": "reliability", "groups": ["system:authenticated"]},
            "object": {"apiVersion": "longhorn.io/v1beta2", "kind": "Backup",
                       "metadata": {"name": uid, "namespace": ns, "labels": {"backup-volume": "vol-1"}},
                       "spec": {"snapshotName": snapshot}},
        }}).encode()


def judge(uid, snapshot):
    try:
        req = urllib.request.Request(url, data=review(uid, snapshot), headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
            resp = json.load(r)["response"]
        verdict = "allowed" if resp.get("allowed") else "denied"
        return verdict, resp.get("warnings") or [], (resp.get("status") or {}).get("message", "")
    except Exception as e:  # noqa: BLE001 - every failure is a data point
        return "error:" + type(e).__name__, [], str(e)[:200]


def ready():
    try:
        with urllib.request.urlopen(ops + "/readyz", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:  # noqa: BLE001
        return 0


start = time.time()
n = 0
with open(out, "a") as f:
    while not os.path.exists(stop_file) and time.time() - start < max_seconds:
        n += 1
        r = ready()
        ok, ok_warn, _ = judge(f"ok-{n}", "snap-ok")
        missing, _, msg = judge(f"missing-{n}", "snap-missing")
        f.write(json.dumps({"t": time.time(), "ready": r, "ok": ok, "ok_warn": ok_warn[:2],
                            "missing": missing, "missing_msg": msg[:200]}) + "\n")
        f.flush()
        time.sleep(0.1)

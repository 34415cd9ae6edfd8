"""POST /execute load for scripts/cluster-check and scripts/bench-cluster.

python3 scripts/lib/load.py URL N CLIENTS TAG [SLEEP] > records.json

N requests from CLIENTS threads (one kept-alive connection each, a new one after an
error). Request i runs `print("TAG-i")` (after time.sleep(SLEEP) when given), labelled
cluster=TAG. Prints one JSON object: each request's status, execution id, answering
node, its token, and the wall time of the whole load."""
import http.client
import json
import sys
import threading
import time
import urllib.parse

url, total, clients, tag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
u = urllib.parse.urlsplit(url)
records = [None] * total
lock = threading.Lock()
next_index = [0]


def take():
    with lock:
        i = next_index[0]
        next_index[0] += 1
        return i if i < total else None


def worker():
    conn = None
    while (i := take()) is not None:
        token = f"{tag}-{i}"
        code = (f"import time\ntime.sleep({pause})\n" if pause else "") + f"print({token!r})"
        body = json.dumps({"code": code, "labels": {"cluster": tag}})
        rec = {"i": i, "token": token, "status": None, "id": None, "node": None, "error": None}
        started = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
            conn.request("POST", "/execute", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            rec["status"] = r.status
            rec["id"] = r.getheader("X-Execution-Id")
            rec["node"] = r.getheader("X-Sandpit-Node")
            if r.status == 200:
                rec["result_status"] = json.loads(data).get("status")
                rec["output"] = json.loads(data).get("output")
            else:
                rec["body"] = data[:300].decode("utf-8", "replace")
            if r.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        except Exception as e:  # a node killed under the request: recorded, not fatal
            rec["error"] = f"{type(e).__name__}: {e}"
            if conn is not None:
                conn.close()
            conn = None
        rec["seconds"] = round(time.monotonic() - started, 4)
        records[i] = rec


t0 = time.monotonic()
threads = [threading.Thread(target=worker) for _ in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
json.dump({"tag": tag, "wall": time.monotonic() - t0, "records": records}, sys.stdout)

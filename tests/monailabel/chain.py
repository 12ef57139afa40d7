"""Drive the serving chain once and write what every request answered: Orthanc (optional), ``monailabel
start_server`` with ``apps/monailabel``, the requests of a plan, 8 concurrent requests, and headless Chromium on
``/ohif/``. Run by the tests in ``tests/monailabel`` (inside a private network namespace when Orthanc is used);
stdlib only, every wait bounded, every server stopped at the end.

    python chain.py plan.json results.json
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ORTHANC = "http://127.0.0.1:8042"


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 300):
    """(status, parsed JSON or text) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        return None, f"{type(error).__name__}: {error}"
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def wait_for(url: str, seconds: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        status, _ = http("GET", url, timeout=5)
        if status == 200:
            return
        time.sleep(1)
    raise RuntimeError(f"{url} did not answer within {seconds} s:\n{log.read_text()[-4000:]}")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (outside a private network namespace, other servers may hold a fixed one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    handle = log.open("w")
    return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def start_orthanc(plan: dict, work: Path) -> subprocess.Popen:
    config = {
        "Name": "medvlm-test", "StorageDirectory": str(work / "orthanc-db"), "IndexDirectory": str(work / "orthanc-db"),
        "HttpPort": 8042, "DicomServerEnabled": False, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "Plugins": [plan["orthanc_plugins"]],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": "127.0.0.1:8042", "Ssl": False},
    }  # fmt: skip
    (work / "orthanc.json").write_text(json.dumps(config))
    process = start(["Orthanc", str(work / "orthanc.json")], work / "orthanc.log")
    wait_for(f"{ORTHANC}/system", 60, process, work / "orthanc.log")
    return process


def upload(files: list[str]) -> list[dict]:
    answers = []
    for name in files:
        status, body = http(
            "POST", f"{ORTHANC}/instances", Path(name).read_bytes(), {"Content-Type": "application/dicom"}
        )
        answers.append({"file": name, "status": status, "body": body})
    return answers


def infer(base: str, task: str, image: str, params: dict | None) -> dict:
    query = urllib.parse.urlencode({"image": image, "output": "json"})
    body = urllib.parse.urlencode({"params": json.dumps(params or {})}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    began = time.monotonic()
    status, answer = http("POST", f"{base}/infer/{urllib.parse.quote(task)}?{query}", body, headers)
    return {"status": status, "answer": answer, "seconds": round(time.monotonic() - began, 2)}


def ohif(base: str, work: Path, plan: dict) -> dict:
    """Headless Chromium on the study list of OHIF: its DOM after the page settled, and a screenshot."""
    url = f"{base}/ohif/"
    common = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,900", f"--user-data-dir={work / 'chromium'}",
              "--virtual-time-budget=30000"]  # fmt: skip
    env = {**os.environ, "HOME": str(work / "home")}  # its caches stay in the test's folder
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180, env=env)
    shot = work / "ohif.png"
    subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=180, env=env)
    return {"dom": dom.stdout, "stderr": dom.stderr[-2000:], "screenshot": str(shot) if shot.exists() else None}


def main(plan_path: str, out_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    work = Path(plan["work"])
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"requests": {}}
    processes = []
    try:
        if plan.get("orthanc_files") is not None:
            processes.append(start_orthanc(plan, work))
            results["uploads"] = upload(plan["orthanc_files"])
            results["corrupt_upload"] = upload(plan.get("orthanc_corrupt", []))
            results["orthanc_series"] = http("GET", f"{ORTHANC}/series?expand")[1]
        env = {**os.environ, **plan.get("server_env", {})}
        env["PATH"] = f"{Path(plan['monailabel']).parent}{os.pathsep}{env.get('PATH', '')}"  # its launcher calls python
        port = plan.get("port") or free_port()
        base = f"http://127.0.0.1:{port}"
        conf = [arg for key, value in plan["conf"].items() for arg in ("--conf", key, str(value))]
        server = start([plan["monailabel"], "start_server", "--app", plan["app"], "--studies", plan["studies"],
                        "--host", "127.0.0.1", "--port", str(port), *conf], work / "monailabel.log", env)  # fmt: skip
        processes.append(server)
        wait_for(f"{base}/info/", plan.get("start_seconds", 300), server, work / "monailabel.log")
        results["info"] = http("GET", f"{base}/info/")[1]
        results["datastore"] = http("GET", f"{base}/datastore/?output=all")[1]
        for name, spec in plan["requests"].items():
            results["requests"][name] = infer(base, spec["task"], spec["image"], spec.get("params"))
        if "concurrent" in plan:
            spec = plan["concurrent"]
            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(infer, base, spec["task"], spec["image"], spec.get("params")) for _ in range(8)]
                results["concurrent"] = [f.result() for f in futures]
        results["info_after"] = http("GET", f"{base}/info/")[1]
        if plan.get("ohif"):
            results["ohif"] = ohif(base, work, plan)
    finally:
        for process in reversed(processes):
            stop(process)
        Path(out_path).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])

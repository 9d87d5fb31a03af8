"""A fake Azure ML workspace for azure-ai-ml's MLClient: an azure-core transport answering the REST calls of
create_or_update, get, stream, download and begin_cancel, with blobs (the code snapshot, the logs, the job's
`results` output) in Azurite on 127.0.0.1.

Written here because the SDK's own test proxy (devtools_testutils) is not on PyPI. Each request is recorded
(method, path, JSON body) so tests can assert what was sent. A submitted `dvc repro` job "runs" by copying the
folder a test gives (what scripts/azureml-job.sh would have written) into the `results` output, then ends in
`final_status`; its log is served by the fake itself.

A submitted job with a `distribution` (a training job) really runs (TrainingRun): its code snapshot and inputs
are downloaded from Azurite, and its command runs once per node, all nodes at once on this machine, as Azure
ML's per-node launch starts it; its outputs go back to Azurite and its status follows the exit codes.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.pipeline.transport import HttpResponse, HttpTransport
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

DATASTORE = "workspaceblobstore"
CONTAINER = "azureml-blobstore"


def route_datastores_to_azurite(monkeypatch, fake: FakeAzureML) -> None:
    """The SDK reaches a datastore at https://<account>.blob.<cloud suffix>, a name that cannot point at 127.0.0.1
    offline: map that one URL pattern onto Azurite (path-style), all else in the SDK left as it is."""
    from azure.ai.ml.constants._common import STORAGE_ACCOUNT_URLS

    monkeypatch.setitem(STORAGE_ACCOUNT_URLS, "AzureBlob", fake.blobs.url.rstrip("/").rsplit("/", 1)[0] + "/{0}")


def _unsigned_jwt() -> str:
    """A token shaped like Entra ID's (the SDK reads the object id out of it); the fake service checks none."""

    def part(claims: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")

    claims = {"oid": str(uuid.UUID(int=1)), "tid": str(uuid.UUID(int=2))}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2ln"


class FakeCredential:
    def get_token(self, *scopes, **kwargs):
        return AccessToken(_unsigned_jwt(), 2**31)

    def get_token_info(self, *scopes, **kwargs):
        return AccessTokenInfo(_unsigned_jwt(), 2**31)


class _Response(HttpResponse):
    def __init__(self, request, status: int, body=None, content_type="application/json"):
        super().__init__(request, None)
        self.status_code = status
        self.reason = "OK" if status < 400 else "Error"
        self.content_type = content_type
        self.headers = {"Content-Type": content_type, "x-ms-request-id": str(uuid.uuid4())}
        if body is None:
            self._body = b""
        elif isinstance(body, bytes | str):
            self._body = body.encode() if isinstance(body, str) else body
        else:
            self._body = json.dumps(body).encode()

    def body(self):
        return self._body

    # the azure.core.rest side of a response, which the generated clients read
    @property
    def content(self):
        return self._body

    def read(self):
        return self._body

    def text(self, encoding=None):
        return self._body.decode(encoding or "utf-8")

    def iter_bytes(self, **kwargs):
        yield self._body

    def iter_raw(self, **kwargs):
        yield self._body

    def json(self):
        return json.loads(self._body) if self._body else None


class LocalTransport(HttpTransport):
    """An azure-core transport answered in this process: subclasses define send(request) -> HttpResponse."""

    def __enter__(self):
        return self

    def __exit__(self, *args):
        pass

    def open(self):
        pass

    def close(self):
        pass


class FakeAzureML(LocalTransport):
    """The workspace `ws` in resource group `rg`: jobs, code and environment assets, one blob datastore."""

    def __init__(
        self,
        azurite_connection: str,
        results_dir: Path | None,
        final_status: str = "Completed",
        *,
        nodes_dir: Path | None = None,
        node_env: dict[str, str] | None = None,
    ):
        """`results_dir`, `final_status`: what a `dvc repro` job returns and how it ends. `nodes_dir`: where
        training jobs run (one folder per job); `node_env`: the environment of their commands, under the job's
        own variables and those Azure ML sets (as the image's would be: PATH, HOME, thread counts)."""
        self.blobs = BlobServiceClient.from_connection_string(azurite_connection)
        self.account_key = self.blobs.credential.account_key
        for name in (CONTAINER, "codes"):
            self.blobs.create_container(name)
        self.results_dir = results_dir
        self.final_status = final_status
        self.nodes_dir = nodes_dir
        self.node_env = node_env or {}
        self.requests: list[tuple[str, str, dict | None]] = []
        self.jobs: dict[str, dict] = {}
        self.codes: dict[str, dict] = {}  # code asset id -> its PUT body (codeUri: where its blobs are)
        self.runs: dict[str, TrainingRun] = {}
        self.polls: dict[str, int] = {}
        self.cancelled: list[str] = []

    def send(self, request, **kwargs):
        body = None
        if request.body:
            try:
                body = json.loads(request.body)
            except (TypeError, ValueError):
                body = None
        path = urlparse(request.url).path
        self.requests.append((request.method, path, body))
        for method, pattern, handler in self._routes():
            match = re.search(pattern, path)
            if request.method == method and match:
                return handler(request, body, *match.groups())
        return _Response(request, 404, {"error": {"code": "NotFound", "message": f"fake: {request.method} {path}"}})

    def _routes(self):
        return [
            ("GET", r"/codes/([^/]+)/versions$", lambda r, b, name: _Response(r, 200, {"value": []})),
            ("POST", r"/codes/([^/]+)/versions/([^/]+)/startPendingUpload$", self._pending_upload),
            ("PUT", r"/codes/([^/]+)/versions/([^/]+)$", self._put_code),
            ("GET", r"/environments/([^/]+)/versions/([^/]+)$", self._not_found),
            ("PUT", r"/environments/([^/]+)/versions/([^/]+)$", self._echo),
            ("PUT", r"/workspaces/[^/]+/jobs/([^/]+)$", self._create_job),
            ("GET", r"/workspaces/[^/]+/jobs/([^/]+)$", self._get_job),
            ("POST", r"/workspaces/[^/]+/jobs/([^/]+)/cancel$", self._cancel),
            ("GET", r"/workspaces/[^/]+$", self._workspace),
            ("GET", r"/discovery$", self._discovery),
            ("GET", r"/runs/([^/]+)/details$", self._run_details),
            ("GET", r"/fake-logs/([^/]+)/(std_log[^/]*\.txt)$", self._log),
            ("POST", r"/rundata$", self._run_data),
            ("POST", r"/dataversion/batchGetResolvedUris$", self._resolved_uris),
            ("GET", r"/datastores$", self._datastores),
            ("GET", r"/datastores/([^/]+)$", self._datastore),
            ("POST", r"/datastores/([^/]+)/listSecrets$", self._datastore_secrets),
        ]

    # --- assets ------------------------------------------------------------------------------------------
    def _echo(self, request, body, name, version):
        path = urlparse(request.url).path
        return _Response(request, 200, {**(body or {}), "id": path, "name": version})

    def _put_code(self, request, body, name, version):
        self.codes[urlparse(request.url).path] = body
        return self._echo(request, body, name, version)

    def _not_found(self, request, body, *groups):
        return _Response(request, 404, {"error": {"code": "NotFound", "message": "no such asset"}})

    def _sas(self, container: str) -> str:
        token = generate_container_sas(
            self.blobs.account_name,
            container,
            account_key=self.account_key,
            permission=ContainerSasPermissions(read=True, write=True, list=True, create=True),
            expiry=datetime.now(UTC) + timedelta(hours=1),
        )
        return f"{self.blobs.url.rstrip('/')}/{container}?{token}"

    def _pending_upload(self, request, body, name, version):
        return _Response(
            request,
            200,
            {
                "blobReferenceForConsumption": {
                    "blobUri": f"{self.blobs.url.rstrip('/')}/codes",
                    "credential": {"credentialType": "SAS", "sasUri": self._sas("codes")},
                },
                "pendingUploadId": str(uuid.uuid4()),
                "pendingUploadType": "TemporaryBlobReference",
            },
        )

    # --- jobs --------------------------------------------------------------------------------------------
    def _job(self, name: str, status: str) -> dict:
        job = json.loads(json.dumps(self.jobs[name]))
        job["properties"]["status"] = status
        return job

    def _create_job(self, request, body, name):
        path = urlparse(request.url).path
        job = {**body, "id": path, "name": name, "type": "Microsoft.MachineLearningServices/workspaces/jobs"}
        studio = {"endpoint": f"https://ml.azure.com/runs/{name}", "jobServiceType": "Studio"}
        job["properties"]["services"] = {"Studio": studio}
        self.jobs[name] = job
        self.polls[name] = 0
        if body["properties"].get("distribution"):
            self.runs[name] = TrainingRun(self, name, body["properties"])
        return _Response(request, 201, self._job(name, "Starting"))

    def _status(self, name: str) -> str:
        if name in self.cancelled:
            return "Canceled"
        if name in self.runs:
            return self.runs[name].status()
        return "Running" if self.polls[name] < 2 else self.final_status

    def _get_job(self, request, body, name):
        if name not in self.jobs:
            return self._not_found(request, body)
        return _Response(request, 200, self._job(name, self._status(name)))

    def _cancel(self, request, body, name):
        self.cancelled.append(name)
        if name in self.runs:
            self.runs[name].stop()
        return _Response(request, 202, None)

    # --- workspace discovery and run history -------------------------------------------------------------
    def _workspace(self, request, body):
        return _Response(
            request,
            200,
            {
                "id": urlparse(request.url).path,
                "name": "ws",
                "location": "westeurope",
                "properties": {"discoveryUrl": "https://westeurope.api.azureml.ms/discovery"},
            },
        )

    def _discovery(self, request, body):
        return _Response(request, 200, {"api": "https://westeurope.api.azureml.ms"})

    def _log_files(self, name: str) -> dict[str, str]:
        """Azure ML's log names: one per process of a distributed job (the SDK streams only process 0's)."""
        if name in self.runs:
            files = [f"std_log_process_{rank}.txt" for rank in range(self.runs[name].nodes)]
        else:
            files = ["std_log.txt"]
        return {f"user_logs/{file}": f"https://westeurope.api.azureml.ms/fake-logs/{name}/{file}" for file in files}

    def _log(self, request, body, name, file):
        if name in self.runs:
            text = self.runs[name].log(int(re.search(r"(\d+)", file).group(1)))
        else:
            text = f"dvc repro in job {name}\nRunning stage 'teacher':\n"
            if self.final_status == "Failed":
                text += "ERROR: failed to reproduce 'teacher'\n"
        return _Response(request, 200, text, content_type="text/plain")

    def _run_details(self, request, body, name):
        if name not in self.jobs:
            return self._not_found(request, body)
        self.polls[name] += 1
        status = self._status(name)
        if status == "Completed" and self.results_dir is not None:
            self._write_results(name)
        details = {"runId": name, "status": status, "logFiles": self._log_files(name)}
        if status == "Failed":
            message = self.runs[name].failure() if name in self.runs else "dvc repro exited 1"
            details["error"] = {"error": {"code": "UserError", "message": message}}
        return _Response(request, 200, details)

    def _write_results(self, name: str) -> None:
        container = self.blobs.get_container_client(CONTAINER)
        for path in self.results_dir.rglob("*"):
            if path.is_file():
                blob = f"{output_prefix(name, 'results')}{path.relative_to(self.results_dir).as_posix()}"
                container.upload_blob(blob, path.read_bytes(), overwrite=True)

    def _run_data(self, request, body):
        name = body["runId"]
        outputs = {}
        for output in self.jobs[name]["properties"].get("outputs") or {"results": {}}:
            asset = f"azureml://locations/westeurope/workspaces/ws/data/azureml_{name}_output_data_{output}/versions/1"
            outputs[output] = {"assetId": asset, "type": "uri_folder"}
        return _Response(
            request, 200, {"runMetadata": {"runId": name, "status": self._status(name), "outputs": outputs}}
        )

    def _resolved_uris(self, request, body):
        values = {}
        for asset in body["values"]:
            name, output = re.search(r"azureml_(.+)_output_data_(\w+)/versions", asset).groups()
            uri = (
                "azureml://subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg/workspaces/ws/"
                f"datastores/{DATASTORE}/paths/{output_prefix(name, output)}"
            )
            values[asset] = {"uri": uri, "type": "UriFolder"}
        return _Response(request, 200, {"values": values})

    def _datastore(self, request, body, name):
        return _Response(
            request,
            200,
            {
                "id": urlparse(request.url).path.split("/datastores")[0] + f"/datastores/{name}",
                "name": name,
                "properties": {
                    "datastoreType": "AzureBlob",
                    "accountName": self.blobs.account_name,
                    "containerName": CONTAINER,
                    "endpoint": "core.windows.net",
                    "protocol": "https",
                    "credentials": {"credentialsType": "AccountKey"},
                    "isDefault": True,
                },
            },
        )

    def _datastores(self, request, body):
        return _Response(request, 200, {"value": [self._datastore(request, body, DATASTORE).json()]})

    def _datastore_secrets(self, request, body, name):
        return _Response(request, 200, {"secretsType": "AccountKey", "key": self.account_key})


def output_prefix(job: str, output: str) -> str:
    """Where a job's named output lies in the default datastore's container (Azure ML's default path)."""
    return f"azureml/{job}/{output}/"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TrainingRun:
    """A distributed command job run as Azure ML runs it, on this machine: `nodes` copies of its code snapshot,
    its inputs downloaded once (Azure ML mounts them on every node), one shared folder per output (a read-write
    mount of one datastore path), and the command on every node at once, with the variables Azure ML sets for a
    PyTorch distribution (NODE_RANK, MASTER_ADDR, MASTER_PORT; WORLD_SIZE, RANK, LOCAL_RANK per process). It is
    Running while a node runs, then Completed if every node exited 0, else Failed; its outputs are uploaded to
    Azurite when it ends. A node still running after `timeout_s` is killed (the job then fails)."""

    timeout_s = 300

    def __init__(self, fake: FakeAzureML, name: str, job: dict):
        assert fake.nodes_dir is not None, "FakeAzureML(nodes_dir=...) runs training jobs"
        self.fake, self.name = fake, name
        self.folder = fake.nodes_dir / name
        self.nodes = job["resources"]["instanceCount"]
        per_node = job["distribution"]["processCountPerInstance"]
        assert per_node == 1, "a per-process launch is not faked here"
        command = job["command"]
        for input_name, spec in (job.get("inputs") or {}).items():
            command = command.replace(f"${{{{inputs.{input_name}}}}}", str(self._download_input(input_name, spec)))
        self.outputs = {output: self.folder / "outputs" / output for output in job.get("outputs") or {}}
        for output, folder in self.outputs.items():
            folder.mkdir(parents=True)
            command = command.replace(f"${{{{outputs.{output}}}}}", str(folder))
        self.command = command
        port = free_port()
        self.started = time.monotonic()
        self.processes: list[subprocess.Popen] = []
        for rank in range(self.nodes):
            workdir = self.folder / f"node-{rank}"
            self._download(self._code_uri(job["codeId"]), workdir)
            env = {
                **fake.node_env,
                **(job.get("environmentVariables") or {}),
                "NODE_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "WORLD_SIZE": str(self.nodes * per_node),
                "RANK": str(rank),
                "LOCAL_RANK": "0",
            }
            with open(self.folder / f"node-{rank}.log", "w") as log:
                self.processes.append(
                    subprocess.Popen(
                        ["bash", "-c", command],
                        cwd=workdir,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # a node's processes are one group: stop() ends them all
                    )
                )
        self.ended = False

    def _code_uri(self, code_id: str) -> str:
        return self.fake.codes[code_id]["properties"]["codeUri"]

    def _download(self, uri: str, folder: Path) -> None:
        """Every blob under `uri` (http://<azurite>/<account>/<container>/<prefix>) into `folder`."""
        container, prefix = urlparse(uri).path.split("/", 3)[2:]
        client = self.fake.blobs.get_container_client(container)
        prefix = prefix.rstrip("/") + "/"
        for blob in client.list_blobs(name_starts_with=prefix):
            target = folder / blob.name[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(client.download_blob(blob.name).readall())

    def _download_input(self, name: str, spec: dict) -> Path:
        """A uri_folder or uri_file input (azureml://datastores/<store>/paths/<path>) as a local path."""
        path = re.search(r"datastores/[^/]+/paths/(.+)$", spec["uri"]).group(1)
        blob_url = f"{self.fake.blobs.url.rstrip('/')}/{CONTAINER}/"
        local = self.folder / "inputs" / name
        if spec["jobInputType"] == "uri_file":
            local.mkdir(parents=True)
            client = self.fake.blobs.get_container_client(CONTAINER)
            target = local / Path(path).name
            target.write_bytes(client.download_blob(path).readall())
            return target
        self._download(blob_url + path, local)
        return local

    def status(self) -> str:
        running = [p for p in self.processes if p.poll() is None]
        if running and time.monotonic() - self.started > self.timeout_s:
            self.stop()
            running = []
        if running:
            return "Running"
        if not self.ended:
            self.ended = True
            self._upload_outputs()
        return "Completed" if all(p.returncode == 0 for p in self.processes) else "Failed"

    def _upload_outputs(self) -> None:
        container = self.fake.blobs.get_container_client(CONTAINER)
        for output, folder in self.outputs.items():
            for path in folder.rglob("*"):
                if path.is_file():
                    blob = output_prefix(self.name, output) + path.relative_to(folder).as_posix()
                    container.upload_blob(blob, path.read_bytes(), overwrite=True)

    def stop(self) -> None:
        """Kill every node's processes (a cancelled job, or one past its time)."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def log(self, rank: int) -> str:
        return (self.folder / f"node-{rank}.log").read_text()

    def failure(self) -> str:
        codes = [p.returncode for p in self.processes]
        return f"node exit codes {codes}"
